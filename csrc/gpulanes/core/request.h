// A request is one sample for one model, with an absolute deadline and a completion callback.
// Ownership: the submitting thread creates it, the model's queue owns it while queued, the
// batch (and so one lane worker) owns it while running, and it dies after its completion ran.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>
#include <c10/core/Event.h>
#include <c10/core/Stream.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "gpulanes/core/error.h"
#include "gpulanes/core/time.h"

namespace gpulanes {

// What a request ended with: an output (tensor, or tuple/list of tensors) or a typed error.
struct Outcome {
  ErrorCode code = ErrorCode::kOk;  // kOk means `output` holds the result
  std::string message;              // human-readable cause when code != kOk
  c10::IValue output;               // this request's slice of the batch output

  bool ok() const { return code == ErrorCode::kOk; }
  static Outcome success(c10::IValue out) { return {ErrorCode::kOk, {}, std::move(out)}; }
  static Outcome failure(ErrorCode c, std::string msg) { return {c, std::move(msg), {}}; }
};

// Called exactly once per accepted request, on a core thread (lane worker or event loop), never
// while a core mutex is held; it must not block for long and must not throw.
using CompletionFn = std::function<void(Outcome&&)>;

struct Request {
  std::uint64_t id = 0;               // unique per runtime, increasing in submission order
  int model = -1;                     // index into the model registry
  std::vector<at::Tensor> inputs;     // one sample: shapes without the batch dimension
  TimeNs arrival = 0;                 // when submit accepted it
  TimeNs deadline = kNever;           // absolute; a result after this is a miss
  int priority = 0;                   // 0 = latency-critical, 1 = best effort
  bool native_completion = false;     // on_done needs no delivery hook (e.g. a C++ waiter)
  TimeNs started = 0;                 // when its batch was handed to a lane (0 = not yet)
  // GPU inputs: one event per input device, recorded at submit on the submitter's current
  // stream there; a lane waits for them before it reads the inputs (the work that made them
  // may still be queued).
  std::vector<c10::Event> inputs_ready;
  // Outputs left on the GPU: the submitter's current stream at submit, on which the lane
  // records them (record_stream) so that their memory is not reused before work queued there.
  std::optional<c10::Stream> consumer_stream;

  // Runs the completion callback the first and only time; later calls return false and do
  // nothing, which is what makes "resolves exactly once" hold even on racing failure paths.
  bool complete(Outcome&& outcome);
  bool completed() const { return done_.load(std::memory_order_acquire); }

  CompletionFn on_done;  // set by the submitter; consumed by complete()

 private:
  std::atomic<bool> done_{false};  // set by the first complete()
};

using RequestPtr = std::unique_ptr<Request>;

}  // namespace gpulanes
