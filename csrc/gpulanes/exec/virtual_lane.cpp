#include "gpulanes/exec/virtual_lane.h"

#include <algorithm>
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

namespace {

class FixedLatencyBackend final : public VirtualBackend {
 public:
  FixedLatencyBackend(int lanes, VirtualLane::LatencyFn latency)
      : n_(lanes), latency_(std::move(latency)) {}

  std::vector<std::unique_ptr<Lane>> make_lanes(const Clock& clock) override {
    clock_ = &clock;
    std::vector<std::unique_ptr<Lane>> out;
    for (int i = 0; i < n_; ++i) {
      auto lane = std::make_unique<VirtualLane>(i, "virtual", clock, latency_);
      lanes_.push_back(lane.get());
      out.push_back(std::move(lane));
    }
    return out;
  }
  TimeNs next_end() const override {
    TimeNs next = kNever;
    for (const VirtualLane* lane : lanes_) {
      if (auto t = lane->busy_until()) next = std::min(next, *t);
    }
    return next;
  }
  void finish_due() override {
    // Lanes ending at the same time report in lane order.
    const TimeNs now = clock_->now();
    for (VirtualLane* lane : lanes_) {
      if (auto t = lane->busy_until(); t && *t <= now) lane->finish();
    }
  }

 private:
  const int n_;
  const Clock* clock_ = nullptr;     // set by make_lanes()
  VirtualLane::LatencyFn latency_;
  std::vector<VirtualLane*> lanes_;  // owned by the runtime
};

}  // namespace

std::shared_ptr<VirtualBackend> make_fixed_latency_backend(int lanes, VirtualLane::LatencyFn latency) {
  return std::make_shared<FixedLatencyBackend>(std::max(1, lanes), std::move(latency));
}

}  // namespace gpulanes
