// What answers one request of the gRPC front end (grpc_frontend.cpp): a unary call, or one
// message of a ModelStreamInfer stream (grpc_stream.cpp). Internal to csrc/gpulanes/serve.
#pragma once

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/status.h>

#include <atomic>
#include <string>

namespace gpulanes::serve {

// Who answers a request first: the reply (runtime, forward hook) or grpc++ cancelling its call.
// Any thread; claim() decides, and only its winner calls finish_ok or finish_status (once).
class CallSlot {
 public:
  virtual ~CallSlot() = default;
  // True exactly once: the caller now owns answering the request.
  bool claim() { return !claimed_.exchange(true, std::memory_order_acq_rel); }
  // After claim() only: `reply` is the serialized response message of the request's method.
  virtual void finish_ok(grpc::ByteBuffer reply) = 0;
  virtual void finish_status(grpc::StatusCode code, const std::string& message) = 0;

 private:
  std::atomic<bool> claimed_{false};  // set by the first claim()
};

class GrpcFrontend;

// The service's method a call names ("" for another service), and seconds until the client's
// deadline (< 0 when it set none: grpc++ reports "infinite" as a far future).
std::string call_method(const grpc::GenericCallbackServerContext* ctx);
double remaining_s(const grpc::GenericCallbackServerContext* ctx);

// The reactor of one ModelStreamInfer call (grpc_stream.cpp).
grpc::ServerGenericBidiReactor* make_stream_reactor(GrpcFrontend* server,
                                                    grpc::GenericCallbackServerContext* ctx);

// At most 512 characters, as the Python front ends (protocol.client_message): an error may echo
// the client's own input (a 10 KB model name, thousands of input names).
inline std::string client_message(const std::string& message) {
  return message.size() <= 512 ? message : message.substr(0, 508) + " ...";
}

}  // namespace gpulanes::serve
