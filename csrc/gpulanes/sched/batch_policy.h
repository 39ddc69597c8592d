// A batch policy decides, when a lane is idle, which model it serves next and how many of that
// model's queued requests go into the batch. It runs only on the event loop (under its lock), so
// it needs no synchronization of its own; it sees queues, never executors.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "gpulanes/core/request.h"
#include "gpulanes/exec/lane.h"
#include "gpulanes/model/registry.h"
#include "gpulanes/queue/edf_queue.h"

namespace gpulanes {

using RequestQueue = EdfQueue<Request>;

// What a policy may look at and take from: the models and their queues, by model index.
struct SchedulingState {
  const ModelRegistry& models;
  std::vector<std::unique_ptr<RequestQueue>>& queues;
};

class BatchPolicy {
 public:
  virtual ~BatchPolicy() = default;
  virtual std::string name() const = 0;
  // Returns the batch `lane` should start at `now` (requests moved out of their queue; the loop
  // fills in the batch id), or a batch with no requests to leave the lane idle. A policy that
  // waits for more requests lowers *wake_at to when it wants to be asked again.
  virtual Batch next_batch(const Lane& lane, SchedulingState& state, TimeNs now,
                           TimeNs* wake_at) = 0;
};

// Throws Error(kInvalidInput) for a policy name that does not exist.
std::unique_ptr<BatchPolicy> make_policy(const std::string& name);

}  // namespace gpulanes
