// The KServe v2 gRPC front end in the core (grpc++'s callback server): ModelInfer for the models
// it was told about runs here from the wire to Runtime::submit and back without Python, and so
// does every request of a ModelStreamInfer stream (grpc_stream.cpp); every other call
// (metadata, readiness, repository load/unload, shared-memory regions, and inference for a model
// it does not know or with tensors in shared memory) goes, as its serialized request, to a
// forward hook that answers it later from any thread. Why: grpcio's own per-call cost in Python was most of a tiny request's time
// (benchmarks/serve.py --floors), so the hot path moved below it.
//
// Threads: grpc++'s callback threads read requests, check the bearer token, decode and submit;
// the rows of a request complete on the runtime's lane threads (native completions), the last
// one encodes the reply and finishes the call. A call is answered exactly once: whoever claims
// its slot first (the reply, or grpc++ telling us the client went away) finishes it, and the
// loser touches nothing of it. set_model/forget_model may be called from any thread.
//
// Lifetime: stop() (or the destructor) shuts the server down: new calls are refused, calls in
// flight get `grace_s` to be answered, then are cancelled; it returns once grpc++ has released
// every call. Requests already in the runtime finish there and their answers are dropped.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <utility>

#include "gpulanes/serve/kserve_infer.h"

namespace grpc {
class ByteBuffer;
class Server;
class CallbackGenericService;
class GenericCallbackServerContext;
}  // namespace grpc

namespace gpulanes {
class Runtime;
}

namespace gpulanes::serve {

class CallSlot;

// The answer to one forwarded call. Calling it finishes the call with a gRPC status code
// (0: OK, with `payload` the serialized reply); only the first call counts, and none does once
// the client is gone. Destroyed unanswered, it finishes the call with INTERNAL so that no
// client waits for an answer that will not come. Any thread.
class Reply {
 public:
  explicit Reply(std::shared_ptr<CallSlot> slot) : slot_(std::move(slot)) {}
  ~Reply();
  Reply(const Reply&) = delete;
  Reply& operator=(const Reply&) = delete;
  void operator()(int code, const std::string& message, const std::string& payload);

 private:
  std::shared_ptr<CallSlot> slot_;  // the call; shared with its reactor
};

// A call the core does not answer itself.
struct ForwardedCall {
  std::string method;        // the RPC's name in the service, e.g. "ModelMetadata"
  std::string payload;       // its serialized request
  double remaining_s = -1;   // until the client's deadline; < 0 when the client set none
};
// Called on a grpc++ thread; must not block for long and must not throw.
using ForwardFn = std::function<void(ForwardedCall, std::shared_ptr<Reply>)>;

struct GrpcFrontendOptions {
  std::string address = "127.0.0.1:0";     // host:port; port 0: any free one
  int max_message_bytes = 64 << 20;        // larger requests are refused by grpc++
  std::optional<std::string> token;        // bearer token every call but health must carry
  int max_rows = 1024;                     // most samples one request may carry
  // TLS: the server's private key and certificate chain (PEM); none: plain text
  std::optional<std::pair<std::string, std::string>> tls_key_and_cert;
};

class GrpcFrontend {
 public:
  // Starts serving at once. Throws Error(kInvalidInput) when the address cannot be bound.
  GrpcFrontend(std::shared_ptr<Runtime> runtime, GrpcFrontendOptions options, ForwardFn forward);
  ~GrpcFrontend();
  GrpcFrontend(const GrpcFrontend&) = delete;
  GrpcFrontend& operator=(const GrpcFrontend&) = delete;

  int port() const { return port_; }
  // ModelInfer for `name` is served here from now on (replacing what was known of it).
  void set_model(const std::string& name, ServedModel model);
  // ModelInfer for `name` goes to the forward hook again.
  void forget_model(const std::string& name);
  // See the lifetime note above. Idempotent; blocks (call it without any lock the forward
  // hook's answers need, e.g. Python's GIL).
  void stop(double grace_s);

  class Reactor;  // one unary call (grpc_frontend.cpp)

 private:
  friend class Reactor;
  friend class StreamReactor;  // one ModelStreamInfer call (grpc_stream.cpp)
  void dispatch(Reactor* call);
  // One ModelInferRequest (`message`), answered through `slot`: served here, or forwarded when
  // its model is not. `remaining`: seconds to the call's deadline (< 0: none).
  void infer(grpc::ByteBuffer& message, const std::shared_ptr<CallSlot>& slot, double remaining);
  bool authorized(const grpc::GenericCallbackServerContext* ctx) const;
  // Fails a call for an unknown method or a missing token, from its headers alone (true then).
  bool refused_before_reading(const grpc::GenericCallbackServerContext* ctx,
                              const std::shared_ptr<CallSlot>& slot) const;

  std::shared_ptr<Runtime> runtime_;                  // what ModelInfer submits to
  const GrpcFrontendOptions options_;
  const ForwardFn forward_;                           // every other call
  mutable std::shared_mutex models_mu_;               // guards models_
  std::map<std::string, std::shared_ptr<const ServedModel>> models_;  // served here
  std::unique_ptr<grpc::CallbackGenericService> service_;  // creates a Reactor per call
  std::unique_ptr<grpc::Server> server_;              // null once stopped
  std::mutex stop_mu_;                                // serializes stop()
  int port_ = 0;                                      // the bound port
};

}  // namespace gpulanes::serve
