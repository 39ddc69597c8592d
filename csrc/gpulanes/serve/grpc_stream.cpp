// gRPC ModelStreamInfer (bidirectional streaming, as Triton's): every request message on the
// stream is a ModelInferRequest served as ModelInfer would be (here, or through the forward
// hook), and its answer goes back on the stream as a ModelStreamInferResponse in the order the
// answers come, an error as its error_message. The call ends OK once the client has closed its
// side and every request is answered.
//
// Threads: grpc++'s callback threads read messages and dispatch them; answers arrive from any
// thread (lanes, the forward hook) and are queued; one write is in flight at a time. Reading
// pauses while kMaxPending requests wait for an answer or for their write, so a client that
// sends without reading holds a bounded amount of memory.
//
// Lifetime: the reactor is deleted by grpc++ (OnDone) after Finish; answers that come later
// find the stream finished (its state outlives the reactor) and are dropped.
#include <deque>
#include <memory>
#include <mutex>

#include "gpulanes/serve/grpc_calls.h"
#include "gpulanes/serve/grpc_frontend.h"
#include "kserve_v2.pb.h"

namespace gpulanes::serve {
namespace {

constexpr int kMaxPending = 256;  // requests read and not yet written back, per stream

// ModelStreamInferResponse{infer_response = `reply`} without parsing `reply`: field 2,
// length-delimited (protobuf's wire format).
grpc::ByteBuffer stream_reply(const grpc::ByteBuffer& reply) {
  std::vector<grpc::Slice> slices;
  std::string out = "\x12";
  std::size_t n = reply.Length();
  do {
    const auto byte = static_cast<unsigned char>(n & 0x7f);
    n >>= 7;
    out.push_back(static_cast<char>(n ? byte | 0x80 : byte));
  } while (n);
  if (reply.Dump(&slices).ok()) {
    for (const auto& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  grpc::Slice slice(out);
  return grpc::ByteBuffer(&slice, 1);
}

grpc::ByteBuffer stream_error(const std::string& message) {
  inference::ModelStreamInferResponse r;
  r.set_error_message(client_message(message));
  grpc::Slice slice(r.SerializeAsString());
  return grpc::ByteBuffer(&slice, 1);
}

}  // namespace

class StreamReactor;

// What a stream's answers and its reactor share; outlives the reactor.
class StreamState {
 public:
  explicit StreamState(StreamReactor* reactor) : reactor_(reactor) {}
  // Any thread: one request's answer, to write back.
  void push(grpc::ByteBuffer message);
  // Reactor callbacks (grpc++ threads).
  void read_one();                // a request was read and dispatched
  bool may_read();                // false: reading pauses until answers are written
  void reads_done();              // the client closed its side (or the call broke)
  void write_done(bool ok);
  void cancelled();
  void reactor_gone();            // OnDone: nothing may touch the reactor from now on

 private:
  void next_locked();             // starts the next write, resumes reading, or finishes

  std::mutex mu_;                      // guards everything below
  StreamReactor* reactor_;             // null once grpc++ is done with the call
  std::deque<grpc::ByteBuffer> queue_; // answers waiting to be written
  grpc::ByteBuffer writing_;           // the answer being written
  bool write_in_flight_ = false;
  bool reads_done_ = false;            // no more requests will come
  bool read_paused_ = false;           // reading waits for pending_ to fall
  bool finished_ = false;              // Finish was called
  int pending_ = 0;                    // requests read and not yet written back
};

// One stream's request: its answer becomes a stream message.
class StreamSlot final : public CallSlot {
 public:
  explicit StreamSlot(std::shared_ptr<StreamState> stream) : stream_(std::move(stream)) {}
  void finish_ok(grpc::ByteBuffer reply) override { stream_->push(stream_reply(reply)); }
  void finish_status(grpc::StatusCode, const std::string& message) override {
    stream_->push(stream_error(message));
  }

 private:
  const std::shared_ptr<StreamState> stream_;
};

class StreamReactor final : public grpc::ServerGenericBidiReactor {
 public:
  StreamReactor(GrpcFrontend* server, grpc::GenericCallbackServerContext* ctx)
      : server_(server), ctx_(ctx), state_(std::make_shared<StreamState>(this)) {
    // As unary calls: the token is checked from the headers, before any message is read.
    struct Refusal final : CallSlot {
      explicit Refusal(StreamReactor* r) : reactor(r) {}
      void finish_ok(grpc::ByteBuffer) override {}
      void finish_status(grpc::StatusCode code, const std::string& message) override {
        reactor->refuse(code, message);
      }
      StreamReactor* reactor;
    };
    if (server_->refused_before_reading(ctx_, std::make_shared<Refusal>(this))) return;
    StartRead(&in_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      state_->reads_done();
      return;
    }
    state_->read_one();
    server_->infer(in_, std::make_shared<StreamSlot>(state_), remaining_s(ctx_));
    in_.Clear();
    if (state_->may_read()) StartRead(&in_);
  }
  void OnWriteDone(bool ok) override { state_->write_done(ok); }
  void OnCancel() override { state_->cancelled(); }
  void OnDone() override {
    state_->reactor_gone();
    delete this;
  }

  // A refusal before reading: the call ends with `code` (nothing was read, nothing is pending).
  void refuse(grpc::StatusCode code, const std::string& message) {
    Finish(grpc::Status(code, client_message(message)));
  }
  void resume_reading() { StartRead(&in_); }

 private:
  GrpcFrontend* const server_;                     // outlives every call (stop() waits)
  grpc::GenericCallbackServerContext* const ctx_;  // grpc++'s, valid until OnDone
  const std::shared_ptr<StreamState> state_;       // shared with the requests' slots
  grpc::ByteBuffer in_;                            // the message being read
};

void StreamState::push(grpc::ByteBuffer message) {
  std::lock_guard<std::mutex> lock(mu_);
  if (finished_ || !reactor_) return;
  queue_.push_back(std::move(message));
  next_locked();
}

void StreamState::read_one() {
  std::lock_guard<std::mutex> lock(mu_);
  ++pending_;
}

bool StreamState::may_read() {
  std::lock_guard<std::mutex> lock(mu_);
  if (finished_) return false;
  read_paused_ = pending_ >= kMaxPending;
  return !read_paused_;
}

void StreamState::reads_done() {
  std::lock_guard<std::mutex> lock(mu_);
  reads_done_ = true;
  next_locked();
}

void StreamState::write_done(bool ok) {
  std::lock_guard<std::mutex> lock(mu_);
  write_in_flight_ = false;
  --pending_;
  if (!ok) {  // the stream broke: nothing more can be written
    queue_.clear();
    if (!finished_ && reactor_) {
      finished_ = true;
      reactor_->Finish(grpc::Status::CANCELLED);
    }
    return;
  }
  next_locked();
}

void StreamState::cancelled() {
  std::lock_guard<std::mutex> lock(mu_);
  queue_.clear();
  if (finished_ || !reactor_) return;
  finished_ = true;
  reactor_->Finish(grpc::Status::CANCELLED);
}

void StreamState::reactor_gone() {
  std::lock_guard<std::mutex> lock(mu_);
  reactor_ = nullptr;
  finished_ = true;
}

void StreamState::next_locked() {
  if (finished_ || !reactor_ || write_in_flight_) return;
  if (!queue_.empty()) {
    writing_ = std::move(queue_.front());
    queue_.pop_front();
    write_in_flight_ = true;
    reactor_->StartWrite(&writing_);
    return;
  }
  if (read_paused_ && !reads_done_ && pending_ < kMaxPending) {
    read_paused_ = false;
    reactor_->resume_reading();
    return;
  }
  // Every request read is answered and written: the call ends once no more can come. (An
  // answer still in the runtime keeps pending_ above zero.)
  if (reads_done_ && pending_ == 0) {
    finished_ = true;
    reactor_->Finish(grpc::Status::OK);
  }
}

grpc::ServerGenericBidiReactor* make_stream_reactor(GrpcFrontend* server,
                                                    grpc::GenericCallbackServerContext* ctx) {
  return new StreamReactor(server, ctx);
}

}  // namespace gpulanes::serve
