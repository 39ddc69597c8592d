// A batch policy decides, when a lane is idle, which model it serves next and how many queued
// requests of that model go into the batch; it also decides which queued requests must fail
// without running. Policies run only on the event loop, under its lock (observe() too), so they
// need no synchronization of their own; admits() is the exception: it runs on submitting threads
// and may only read immutable state. They see queues and profiles, never executors.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "gpulanes/core/batch.h"
#include "gpulanes/core/request.h"
#include "gpulanes/model/registry.h"
#include "gpulanes/predict/latency_predictor.h"
#include "gpulanes/predict/profile_book.h"
#include "gpulanes/queue/request_queue.h"
#include "gpulanes/sched/arrival_rate.h"
#include "gpulanes/sched/lane_view.h"

namespace gpulanes {

using RequestQueue = RequestQueueT<Request>;

// What a policy may look at and take from, by model index. A lane serves only the models
// profiles.models_of(lane) lists; a policy hands it no other.
struct SchedulingState {
  const ModelRegistry& models;
  std::vector<std::unique_ptr<RequestQueue>>& queues;
  const ProfileBook& profiles;                             // by (model, lane); empty: unknown
  const std::vector<std::unique_ptr<ArrivalRate>>& rates;  // recent arrival gaps
  const std::unique_ptr<LatencyPredictor>& predictor;      // interference-aware; may be null
};

// Feedback after every batch.
struct BatchObservation {
  int model = -1;
  int lane = -1;
  int size = 0;
  DurationNs predicted_ns = 0;  // what the policy predicted when it chose the batch (0: none)
  DurationNs profiled_ns = 0;   // the latency profile's value for this size (0: no profile)
  DurationNs actual_ns = 0;     // lane time from start to outputs ready
  DurationNs slo_ns = 0;        // the model's SLO
};

// Knobs of all policies; each reads its own. Triton's names are given where they exist.
struct PolicyConfig {
  // max_delay (Triton dynamic batcher)
  std::vector<int> preferred_batch_sizes;  // preferred_batch_size
  DurationNs max_queue_delay_ns = 0;       // max_queue_delay_microseconds
  DurationNs queue_timeout_ns = 0;         // default_queue_policy.default_timeout_microseconds
                                           // (timeout_action REJECT); 0 = none
  // aimd (Clipper)
  int aimd_increase = 1;        // added to the batch cap after a batch within the SLO
  double aimd_decrease = 0.9;   // the cap is multiplied by this after a batch over the SLO
  // deadline
  DurationNs min_margin_ns = 200'000;  // floor of the safety margin
  double margin_quantile = 0.99;       // margin = this quantile of recent prediction errors
  int margin_window = 256;             // recent batches per model the margin looks at
  double scale_alpha = 0.1;            // EWMA weight of measured/profiled latency per batch
  bool wait_for_batch = false;         // may idle a lane to let a larger batch form
  bool queue_admission = true;         // refuse at submit (Overloaded) what the work queued
                                       // ahead would make finish late (has_room)
  bool fair_share = false;             // on a contended lane, a queued model that got less
                                       // than an even share of lane time lately goes first
};

class BatchPolicy {
 public:
  virtual ~BatchPolicy() = default;
  virtual std::string name() const = 0;
  // How the runtime must order each model's queue for this policy.
  virtual QueueOrder queue_order() const = 0;
  // Moves requests that must fail now (without running) into `out`; returns when the next
  // queued request may have to (kNever: none).
  virtual TimeNs expire(SchedulingState& state, TimeNs now, std::vector<RequestPtr>& out) = 0;
  // The batch `lane` should start at `now` (requests moved out of their queue, predicted_ns
  // set when known; the loop fills in the id), or a batch with no requests to leave it idle.
  // A policy that waits lowers *wake_at to when it wants to be asked again.
  virtual Batch next_batch(const LaneView& lane, SchedulingState& state, TimeNs now,
                           TimeNs* wake_at) = 0;
  virtual void observe(const BatchObservation&) {}
  // Model slot `model` starts over for another model: what was learned of it goes. Called with
  // the loop paused.
  virtual void forget(int /*model*/) {}
  // Admission control at submit, on the submitting thread: false refuses the request with
  // DeadlineExceeded. May read only what does not change while serving (profiles, specs).
  virtual bool admits(const SchedulingState&, int /*model*/, TimeNs /*now*/,
                      TimeNs /*deadline*/) const {
    return true;
  }
  // Admission by queued work, on the submitting thread after admits(): false refuses the
  // request with Overloaded because what is queued ahead of it on the lanes that serve its model
  // would not let it finish in time; `why` then says by how much. May read profiles, specs and
  // queue sizes (which are thread-safe), nothing the loop changes otherwise.
  virtual bool has_room(const SchedulingState&, int /*model*/, int /*priority*/, TimeNs /*now*/,
                        TimeNs /*deadline*/, std::string* /*why*/) const {
    return true;
  }
};

// Throws Error(kInvalidInput) naming the first knob outside its range (they are named as
// Runtime(policy_options=...) names them; the ranges are in the README's policy table).
void validate(const PolicyConfig& config);

// "deadline", "fifo", "max_delay", "aimd". Throws Error(kInvalidInput) for another name or a
// knob out of range (validate).
std::unique_ptr<BatchPolicy> make_policy(const std::string& name, const PolicyConfig& config = {});

}  // namespace gpulanes
