#include "gpulanes/serve/grpc_frontend.h"

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/codegen/proto_utils.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <random>
#include <regex>
#include <set>

#include "gpulanes/core/string_tensor.h"
#include "gpulanes/runtime/runtime.h"
#include "gpulanes/serve/grpc_calls.h"

namespace gpulanes::serve {
namespace {

constexpr std::string_view kService = "/inference.GRPCInferenceService/";
// The service's calls the forward hook answers (ModelInfer too, for models not served here).
const std::set<std::string, std::less<>> kForwarded = {
    "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelConfig", "ModelInfer",
    "ModelStatistics",
    "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload",
    "SystemSharedMemoryStatus", "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus", "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister"};

// Whether a request names a shared-memory region for an input or an output: the regions are
// the Python side's (python/gpulanes/serve/shared_memory.py), so such a request is forwarded.
bool uses_shared_memory(const inference::ModelInferRequest& r) {
  auto names_one = [](const auto& params) {
    return params.count("shared_memory_region") || params.count("shared_memory_offset") ||
           params.count("shared_memory_byte_size");
  };
  for (const auto& t : r.inputs()) {
    if (names_one(t.parameters())) return true;
  }
  for (const auto& t : r.outputs()) {
    if (names_one(t.parameters())) return true;
  }
  return false;
}

grpc::StatusCode code_of(ErrorCode code) {
  switch (code) {
    case ErrorCode::kUnknownModel: return grpc::StatusCode::NOT_FOUND;
    case ErrorCode::kOverloaded: return grpc::StatusCode::UNAVAILABLE;
    case ErrorCode::kQueueFull: return grpc::StatusCode::RESOURCE_EXHAUSTED;
    case ErrorCode::kRuntimeClosed: return grpc::StatusCode::UNAVAILABLE;
    case ErrorCode::kDeadlineExceeded: return grpc::StatusCode::DEADLINE_EXCEEDED;
    case ErrorCode::kInvalidInput: return grpc::StatusCode::INVALID_ARGUMENT;
    default: return grpc::StatusCode::INTERNAL;  // kModelError, kInternal
  }
}

// Compares without stopping at the first difference, so timing does not tell how much of a
// guessed token was right.
bool same_secret(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() != b.size();
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) diff |= a[i] ^ b[i];
  return diff == 0;
}

}  // namespace

// A unary call's slot: its answer finishes the call.
class UnarySlot final : public CallSlot {
 public:
  explicit UnarySlot(GrpcFrontend::Reactor* reactor) : reactor_(reactor) {}
  void finish_ok(grpc::ByteBuffer reply) override;
  void finish_status(grpc::StatusCode code, const std::string& message) override;

 private:
  GrpcFrontend::Reactor* const reactor_;  // alive until its call is finished (claim first)
};

// One call: reads its single request message, then waits for someone to claim and answer it.
class GrpcFrontend::Reactor final : public grpc::ServerGenericBidiReactor {
 public:
  Reactor(GrpcFrontend* server, grpc::GenericCallbackServerContext* ctx)
      : server_(server), ctx_(ctx), slot_(std::make_shared<UnarySlot>(this)) {
    // The method and the token come with the call's headers: a call refused for either is
    // answered before its message is read, so that no unauthenticated message is ever taken
    // in (or inflated, when it comes compressed).
    if (server_->refused_before_reading(ctx_, slot_)) return;
    StartRead(&in_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the client closed without a message
      fail(grpc::StatusCode::INVALID_ARGUMENT, "no request message");
      return;
    }
    server_->dispatch(this);
  }
  void OnCancel() override {
    if (slot_->claim()) Finish(grpc::Status::CANCELLED);
  }
  void OnDone() override { delete this; }

  // After slot()->claim() only.
  void finish_ok(grpc::ByteBuffer reply) {
    out_ = std::move(reply);
    StartWriteAndFinish(&out_, grpc::WriteOptions(), grpc::Status::OK);
  }
  void finish_status(grpc::StatusCode code, const std::string& message) {
    Finish(grpc::Status(code, client_message(message)));
  }
  // Claims and fails the call, unless someone else answers it.
  void fail(grpc::StatusCode code, const std::string& message) {
    if (slot_->claim()) finish_status(code, message);
  }

  grpc::GenericCallbackServerContext* context() const { return ctx_; }
  std::shared_ptr<CallSlot> slot() const { return slot_; }
  grpc::ByteBuffer& request() { return in_; }

 private:
  GrpcFrontend* const server_;                         // outlives every call (stop() waits)
  grpc::GenericCallbackServerContext* const ctx_;      // grpc++'s, valid until OnDone
  const std::shared_ptr<UnarySlot> slot_;              // shared with whoever answers
  grpc::ByteBuffer in_;                                // the request message
  grpc::ByteBuffer out_;                               // the reply, while it is written
};

void UnarySlot::finish_ok(grpc::ByteBuffer reply) { reactor_->finish_ok(std::move(reply)); }

void UnarySlot::finish_status(grpc::StatusCode code, const std::string& message) {
  reactor_->finish_status(code, message);
}

std::string call_method(const grpc::GenericCallbackServerContext* ctx) {
  const std::string& m = ctx->method();
  return m.compare(0, kService.size(), kService) == 0 ? m.substr(kService.size()) : "";
}

double remaining_s(const grpc::GenericCallbackServerContext* ctx) {
  const double s = std::chrono::duration<double>(ctx->deadline() -
                                                 std::chrono::system_clock::now()).count();
  return s < 86400.0 * 365 ? std::max(s, 0.0) : -1.0;
}

namespace {

void fail(const std::shared_ptr<CallSlot>& slot, grpc::StatusCode code, const std::string& why) {
  if (slot->claim()) slot->finish_status(code, why);
}

void answer_ok(const std::shared_ptr<CallSlot>& slot, const google::protobuf::Message& reply) {
  if (!slot->claim()) return;
  grpc::ByteBuffer buf;
  bool own = false;
  grpc::Status s = grpc::SerializationTraits<google::protobuf::Message>::Serialize(reply, &buf, &own);
  if (!s.ok()) {
    slot->finish_status(grpc::StatusCode::INTERNAL, s.error_message());
    return;
  }
  slot->finish_ok(std::move(buf));
}

// What a client is told of a model's failure (or an internal error): its last line with file
// paths masked, and an error id; the whole text (a TorchScript traceback with source lines and
// paths) goes to the server's log under that id. As protocol.public_error in Python.
std::string public_model_error(const std::string& why) {
  static std::atomic<std::uint64_t> counter{std::random_device{}()};
  char id[17];
  std::snprintf(id, sizeof id, "%08llx",
                static_cast<unsigned long long>(counter.fetch_add(0x9e3779b97f4a7c15ULL) >> 32));
  std::fprintf(stderr, "gpulanes serve: error %s: %s\n", id, why.c_str());
  std::size_t end = why.find_last_not_of(" \t\r\n");
  std::string last = end == std::string::npos ? "the model failed" : why.substr(0, end + 1);
  if (auto nl = last.find_last_of('\n'); nl != std::string::npos) last = last.substr(nl + 1);
  static const std::regex kPath(R"((/[\w.@+-]+){2,}/?)");
  last = std::regex_replace(last.substr(0, 300), kPath, "<path>");
  return last + " (error id " + id + "; details in the server log)";
}

void answer_error(const std::shared_ptr<CallSlot>& slot, ErrorCode code, const std::string& why) {
  if (!slot->claim()) return;
  const bool internal = code == ErrorCode::kModelError || code == ErrorCode::kInternal;
  slot->finish_status(code_of(code), internal ? public_model_error(why) : why);
}

// One ModelInfer served here: its rows are separate gpulanes requests (batched by the runtime
// with everyone else's); the last row to finish answers the call.
class InferJob {
 public:
  InferJob(std::shared_ptr<CallSlot> slot, std::string model, std::shared_ptr<const ServedModel> io,
           std::vector<std::string> requested, std::string id, std::size_t rows)
      : slot_(std::move(slot)), model_(std::move(model)), io_(std::move(io)),
        requested_(std::move(requested)), id_(std::move(id)), outputs_(rows), errors_(rows),
        left_(static_cast<int>(rows)) {}

  // Any thread, once per row.
  void row_done(std::size_t row, Outcome&& o) {
    if (!o.ok()) {
      errors_[row] = {o.code, std::move(o.message)};
    } else {
      try {
        outputs_[row] = tensors_of(o.output);
      } catch (const Error& e) {
        errors_[row] = {e.code(), e.what()};
      }
    }
    if (left_.fetch_sub(1, std::memory_order_acq_rel) == 1) finish();
  }

 private:
  static std::vector<at::Tensor> tensors_of(const c10::IValue& v) {
    std::vector<at::Tensor> out;
    auto add = [&](const c10::IValue& x) {
      if (x.isString()) {  // a string output: this row's element of a BYTES tensor
        const std::string_view s = x.toStringRef();
        out.push_back(pack_strings({&s, 1}));
        return;
      }
      if (!x.isTensor()) throw Error(ErrorCode::kModelError, "the model returned a non-tensor output");
      out.push_back(x.toTensor());
    };
    if (v.isTuple()) {
      for (const auto& x : v.toTupleRef().elements()) add(x);
    } else if (v.isList()) {
      for (const auto& x : v.toListRef()) add(x);
    } else {
      add(v);
    }
    return out;
  }

  void finish() {
    // As the Python front ends: the first failed row's error (in row order) answers for all.
    for (auto& e : errors_) {
      if (e.first != ErrorCode::kOk) return answer_error(slot_, e.first, e.second);
    }
    inference::ModelInferResponse reply;
    reply.set_model_name(model_);
    reply.set_model_version("1");
    reply.set_id(id_);
    try {
      encode_outputs(model_, *io_, requested_, outputs_, &reply);
    } catch (const Error& e) {
      return answer_error(slot_, e.code(), e.what());
    } catch (const std::exception& e) {
      return answer_error(slot_, ErrorCode::kModelError, e.what());
    }
    answer_ok(slot_, reply);
  }

  const std::shared_ptr<CallSlot> slot_;
  const std::string model_;
  const std::shared_ptr<const ServedModel> io_;
  const std::vector<std::string> requested_;
  const std::string id_;
  std::vector<std::vector<at::Tensor>> outputs_;                 // per row; row's own thread
  std::vector<std::pair<ErrorCode, std::string>> errors_;        // per row; kOk: none
  std::atomic<int> left_;                                        // rows not finished yet
};

}  // namespace

Reply::~Reply() {
  if (slot_->claim()) {
    slot_->finish_status(grpc::StatusCode::INTERNAL, "the server dropped this call");
  }
}

void Reply::operator()(int code, const std::string& message, const std::string& payload) {
  if (!slot_->claim()) return;
  if (code != 0) {
    slot_->finish_status(static_cast<grpc::StatusCode>(code), message);
    return;
  }
  grpc::Slice s(payload);
  slot_->finish_ok(grpc::ByteBuffer(&s, 1));
}

GrpcFrontend::GrpcFrontend(std::shared_ptr<Runtime> runtime, GrpcFrontendOptions options,
                           ForwardFn forward)
    : runtime_(std::move(runtime)), options_(std::move(options)), forward_(std::move(forward)) {
  if (options_.max_rows < 1 || options_.max_message_bytes < 1) {
    throw Error(ErrorCode::kInvalidInput, "max_rows and max_message_bytes must be >= 1");
  }
  struct Service final : grpc::CallbackGenericService {
    explicit Service(GrpcFrontend* s) : server(s) {}
    grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override {
      if (call_method(ctx) == "ModelStreamInfer") return make_stream_reactor(server, ctx);
      return new Reactor(server, ctx);
    }
    GrpcFrontend* server;
  };
  service_ = std::make_unique<Service>(this);
  grpc::ServerBuilder builder;
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (options_.tls_key_and_cert) {
    grpc::SslServerCredentialsOptions tls;
    tls.pem_key_cert_pairs.push_back({options_.tls_key_and_cert->first,
                                      options_.tls_key_and_cert->second});
    credentials = grpc::SslServerCredentials(tls);
  }
  builder.AddListeningPort(options_.address, credentials, &port_);
  // No SO_REUSEPORT (grpc++ sets it by default): a second server on the same port must fail
  // to bind, not share the port's clients with this one.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.SetMaxReceiveMessageSize(options_.max_message_bytes);
  // Compressed messages are refused (UNIMPLEMENTED, from the call's headers, before a byte is
  // inflated): grpc++ up to at least 1.51 inflates a message whole before checking it against
  // the size limit, so a 128 MiB gzip bomb of a few hundred KiB took 256 MB of memory. grpcio's
  // front end (grpc_frontend = "python") bounds inflation and accepts them.
  builder.SetCompressionAlgorithmSupportStatus(GRPC_COMPRESS_DEFLATE, false);
  builder.SetCompressionAlgorithmSupportStatus(GRPC_COMPRESS_GZIP, false);
  builder.SetMaxSendMessageSize(options_.max_message_bytes);
  builder.RegisterCallbackGenericService(service_.get());
  server_ = builder.BuildAndStart();
  if (!server_ || port_ == 0) {
    server_.reset();
    throw Error(ErrorCode::kInvalidInput,
                "gRPC could not listen on " + options_.address + " (is the port in use?)");
  }
}

GrpcFrontend::~GrpcFrontend() { stop(0); }

void GrpcFrontend::set_model(const std::string& name, ServedModel model) {
  if (model.input_names.size() != model.input_dtypes.size() ||
      model.input_names.size() != model.samples.size()) {
    throw Error(ErrorCode::kInvalidInput, "model " + py_repr(name) +
                                              ": input names, dtypes and shapes differ in count");
  }
  std::unique_lock lock(models_mu_);
  models_[name] = std::make_shared<const ServedModel>(std::move(model));
}

void GrpcFrontend::forget_model(const std::string& name) {
  std::unique_lock lock(models_mu_);
  models_.erase(name);
}

void GrpcFrontend::stop(double grace_s) {
  std::lock_guard lock(stop_mu_);
  if (!server_) return;
  server_->Shutdown(std::chrono::system_clock::now() +
                    std::chrono::microseconds(static_cast<std::int64_t>(std::max(grace_s, 0.0) * 1e6)));
  server_->Wait();
  server_.reset();
}

bool GrpcFrontend::authorized(const grpc::GenericCallbackServerContext* ctx) const {
  if (!options_.token) return true;
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) return false;
  return same_secret(std::string_view(it->second.data(), it->second.size()),
                     "Bearer " + *options_.token);
}

bool GrpcFrontend::refused_before_reading(const grpc::GenericCallbackServerContext* ctx,
                                          const std::shared_ptr<CallSlot>& slot) const {
  const std::string method = call_method(ctx);
  const bool open = method == "ServerLive" || method == "ServerReady";
  if (!open && !kForwarded.count(method) && method != "ModelStreamInfer") {
    fail(slot, grpc::StatusCode::UNIMPLEMENTED, "no method " + ctx->method());
    return true;
  }
  if (!open && !authorized(ctx)) {
    fail(slot, grpc::StatusCode::UNAUTHENTICATED, "missing or wrong bearer token");
    return true;
  }
  return false;
}

void GrpcFrontend::dispatch(Reactor* call) {
  const std::string method = call_method(call->context());
  if (method == "ServerLive") {
    inference::ServerLiveResponse live;
    live.set_live(true);
    answer_ok(call->slot(), live);
    return;
  }
  std::string payload;
  if (method == "ModelInfer") {
    infer(call->request(), call->slot(), remaining_s(call->context()));  // the hot path
    return;
  } else {
    std::vector<grpc::Slice> slices;
    if (call->request().Dump(&slices).ok()) {
      for (const auto& s : slices) {
        payload.append(reinterpret_cast<const char*>(s.begin()), s.size());
      }
    }
  }
  forward_(ForwardedCall{method, std::move(payload), remaining_s(call->context())},
           std::make_shared<Reply>(call->slot()));
}

void GrpcFrontend::infer(grpc::ByteBuffer& message, const std::shared_ptr<CallSlot>& slot,
                         double remaining) {
  auto request = std::make_shared<inference::ModelInferRequest>();
  grpc::Status parsed =
      grpc::SerializationTraits<inference::ModelInferRequest>::Deserialize(&message, request.get());
  if (!parsed.ok()) {
    fail(slot, grpc::StatusCode::INVALID_ARGUMENT, "malformed request: " + parsed.error_message());
    return;
  }
  const std::string& name = request->model_name();
  std::shared_ptr<const ServedModel> io;
  {
    std::shared_lock lock(models_mu_);
    if (auto it = models_.find(name); it != models_.end()) io = it->second;
  }
  if (!io || uses_shared_memory(*request)) {  // the forward hook knows whether it exists
    forward_(ForwardedCall{"ModelInfer", request->SerializeAsString(), remaining},
             std::make_shared<Reply>(slot));
    return;
  }
  if (!request->model_version().empty() && request->model_version() != "1") {
    fail(slot, grpc::StatusCode::NOT_FOUND, "model " + py_repr(name) + " has only version 1, not " +
                                                py_repr(request->model_version()));
    return;
  }
  DecodedInfer decoded;
  try {
    decoded = decode_infer(name, *io, request, std::min(options_.max_rows, io->max_rows));
  } catch (const Error& e) {
    fail(slot, code_of(e.code()), e.what());
    return;
  }
  // A gRPC deadline, when the client set one, caps the request's own.
  std::optional<double> timeout_ms = decoded.timeout_ms;
  if (remaining >= 0) {
    if (!timeout_ms || remaining * 1e3 < *timeout_ms) timeout_ms = std::max(remaining * 1e3, 1e-3);
  }
  std::optional<TimeNs> deadline;
  if (timeout_ms) deadline = runtime_->clock().now() + from_ms(*timeout_ms);
  const std::size_t rows = decoded.rows.size();
  auto job = std::make_shared<InferJob>(slot, name, io, std::move(decoded.requested),
                                        request->id(), rows);
  for (std::size_t r = 0; r < rows; ++r) {
    try {
      runtime_->submit(name, std::move(decoded.rows[r]), deadline, decoded.priority,
                       [job, r](Outcome&& o) { job->row_done(r, std::move(o)); },
                       /*native=*/true);
    } catch (const Error& e) {
      job->row_done(r, Outcome::failure(e.code(), e.what()));
    }
  }
}

}  // namespace gpulanes::serve
