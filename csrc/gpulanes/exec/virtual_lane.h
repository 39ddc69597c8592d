// A lane on simulated time: no thread and no executor. dispatch() records when the batch will end
// (now + the latency function's answer); whoever drives the virtual clock calls finish() once the
// clock reaches busy_until(). Every request gets an empty (None) output. Used by deterministic
// tests of the scheduling code, which is the same code the real lanes use.
#pragma once

#include <functional>
#include <optional>
#include <string>

#include "gpulanes/exec/lane.h"
#include "gpulanes/exec/virtual_backend.h"

namespace gpulanes {

class VirtualLane final : public Lane {
 public:
  using LatencyFn = std::function<DurationNs(int model, int batch_size)>;

  VirtualLane(int index, std::string kind, const Clock& clock, LatencyFn latency);

  int index() const override { return index_; }
  const std::string& kind() const override { return kind_; }
  std::string device() const override { return "virtual:" + std::to_string(index_); }
  void start(LaneListener* listener, const std::function<void()>& init) override;
  void dispatch(Batch&& batch) override;
  void stop() override {}

  // When the running batch ends, if one runs.
  std::optional<TimeNs> busy_until() const;
  // Reports the running batch as finished at the current virtual time.
  void finish();

 private:
  const int index_;
  const std::string kind_;
  const Clock& clock_;                // a VirtualClock
  LatencyFn latency_;                 // batch duration by (model, size)
  LaneListener* listener_ = nullptr;  // set by start()
  std::optional<Batch> running_;      // the batch in progress
  TimeNs started_ = 0;                // when it was dispatched
  TimeNs ends_ = 0;                   // when it ends
};

// `lanes` VirtualLanes sharing one latency function, as a backend.
std::shared_ptr<VirtualBackend> make_fixed_latency_backend(int lanes, VirtualLane::LatencyFn latency);

}  // namespace gpulanes
