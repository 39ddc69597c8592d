#include "gpulanes/exec/virtual_lane.h"

#include <stdexcept>

#include "gpulanes/core/clock.h"

namespace gpulanes {

VirtualLane::VirtualLane(int index, std::string kind, const Clock& clock, LatencyFn latency)
    : index_(index), kind_(std::move(kind)), clock_(clock), latency_(std::move(latency)) {}

void VirtualLane::start(LaneListener* listener, const std::function<void()>& init) {
  listener_ = listener;
  if (init) init();
}

void VirtualLane::dispatch(Batch&& batch) {
  if (running_) throw std::logic_error("VirtualLane::dispatch while a batch runs");
  started_ = clock_.now();
  ends_ = started_ + latency_(batch.model, static_cast<int>(batch.requests.size()));
  running_ = std::move(batch);
}

std::optional<TimeNs> VirtualLane::busy_until() const {
  return running_ ? std::optional<TimeNs>(ends_) : std::nullopt;
}

void VirtualLane::finish() {
  if (!running_) return;
  Batch batch = std::move(*running_);
  running_.reset();
  BatchReport report;
  report.lane = index_;
  report.start = started_;
  report.end = clock_.now();
  report.exec_ns = report.end - report.start;
  report.ok = true;
  report.predicted_ns = batch.predicted_ns;
  std::vector<Outcome> outcomes(batch.requests.size(), Outcome::success(c10::IValue()));
  listener_->on_batch_finished(std::move(batch), std::move(outcomes), report);
}

}  // namespace gpulanes
