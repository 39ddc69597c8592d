#include "gpulanes/runtime/event_loop.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>

#include "gpulanes/core/clock.h"

namespace gpulanes {

EventLoop::EventLoop(const Clock& clock, SchedulingState state, std::vector<Lane*> lanes,
                     BatchPolicy& policy, LoopSink& sink)
    : clock_(clock),
      state_(state),
      lanes_(std::move(lanes)),
      policy_(policy),
      sink_(sink),
      lane_idle_(lanes_.size(), 1) {}

EventLoop::~EventLoop() {
  if (thread_.joinable()) stop(false);
}

void EventLoop::start(std::function<void()> on_thread) {
  thread_ = std::thread([this, on_thread = std::move(on_thread)] {
    if (on_thread) on_thread();
    run();
  });
}

void EventLoop::wake() { on_event(-1); }

void EventLoop::lane_idle(int lane) { on_event(lane); }

void EventLoop::on_event(int idle_lane) {
  std::unique_lock<std::mutex> lock(mu_, std::try_to_lock);
  if (!lock.owns_lock() || stopping_ || !thread_.joinable()) {
    // The loop thread (or another inline round) will see the event.
    if (!lock.owns_lock()) lock.lock();
    if (idle_lane >= 0) lane_idle_[idle_lane] = 1;
    pending_ = true;
    lock.unlock();
    cv_.notify_one();
    if (idle_lane >= 0) idle_cv_.notify_all();
    return;
  }
  if (idle_lane >= 0) lane_idle_[idle_lane] = 1;
  if (idle_lane >= 0 && paused_) idle_cv_.notify_all();
  std::vector<Failure> failures;
  const TimeNs wake_at = step_locked(clock_.now(), failures);
  const bool hand_over = wake_at < loop_wake_at_;  // the loop thread must re-arm its timer
  if (hand_over) pending_ = true;
  lock.unlock();
  if (hand_over) cv_.notify_one();
  for (auto& f : failures) sink_.fail(std::move(f.requests), f.code, f.why);
}

void EventLoop::stop(bool drain) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    drain_ = drain;
    pending_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) {
    thread_.join();
  } else {
    run_round();  // driven externally: apply the stop (fail the queue unless draining) now
  }
}

void EventLoop::pause() {
  std::lock_guard<std::mutex> lock(mu_);
  paused_ = true;
}

bool EventLoop::lanes_idle() {
  std::lock_guard<std::mutex> lock(mu_);
  return std::all_of(lane_idle_.begin(), lane_idle_.end(), [](char idle) { return idle != 0; });
}

void EventLoop::pause_until_idle() {
  std::unique_lock<std::mutex> lock(mu_);
  paused_ = true;
  idle_cv_.wait(lock, [&] {
    return std::all_of(lane_idle_.begin(), lane_idle_.end(), [](char idle) { return idle != 0; });
  });
}

void EventLoop::swap_lanes(std::vector<Lane*> lanes, const std::function<void()>& swap) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    swap();
    lanes_ = std::move(lanes);
    lane_idle_.assign(lanes_.size(), 1);
    paused_ = false;
    pending_ = true;
  }
  cv_.notify_one();
}

bool EventLoop::finished_locked() const {
  if (!stopping_) return false;
  for (char idle : lane_idle_) if (!idle) return false;
  for (const auto& q : state_.queues) if (q->size() > 0) return false;
  return true;
}

void EventLoop::fail_models_without_a_healthy_lane(std::vector<Failure>& failures) {
  if (std::all_of(lanes_.begin(), lanes_.end(), [](const Lane* l) { return l->healthy(); })) return;
  const int models = std::min(state_.profiles.models(), static_cast<int>(state_.queues.size()));
  for (int m = 0; m < models; ++m) {
    const std::vector<int>& serving = state_.profiles.lanes_of(m);
    const bool none = !serving.empty() && std::all_of(serving.begin(), serving.end(), [&](int l) {
      return l >= static_cast<int>(lanes_.size()) || !lanes_[l]->healthy();
    });
    if (!none) continue;
    std::vector<RequestPtr> stranded = state_.queues[m]->drain();
    if (stranded.empty()) continue;
    failures.push_back({std::move(stranded), ErrorCode::kModelError,
                        "every lane that serves model '" + state_.models.at(m).spec.name +
                            "' gave up: its worker process kept dying (see lanes())"});
  }
}

TimeNs EventLoop::step_locked(TimeNs now, std::vector<Failure>& failures) {
  // 1. Requests the policy will not run fail before anything else happens.
  std::vector<RequestPtr> expired;
  TimeNs wake_at = policy_.expire(state_, now, expired);
  if (!expired.empty()) {
    failures.push_back({std::move(expired), ErrorCode::kDeadlineExceeded,
                        "deadline cannot be met: dropped before running (policy " +
                            policy_.name() + ")"});
  }
  if (stopping_ && !drain_) {
    for (auto& q : state_.queues) {
      auto all = q->drain();
      if (!all.empty()) {
        failures.push_back({std::move(all), ErrorCode::kRuntimeClosed,
                            "runtime shut down (drain=False) before the request ran"});
      }
    }
  }
  // 2. A lane that gave up (a process lane whose worker kept dying) gets no batch: its models
  // are served by their other lanes, and a model left with none has its queue failed now
  // rather than stranded.
  fail_models_without_a_healthy_lane(failures);
  // 3. Every idle lane gets the batch the policy picks for it.
  for (std::size_t i = 0; i < lanes_.size() && !paused_; ++i) {
    if (!lane_idle_[i] || !lanes_[i]->healthy()) continue;
    const Lane& lane = *lanes_[i];
    Batch batch = policy_.next_batch(LaneView{lane.index(), lane.device_index(), lane.sms()},
                                     state_, now, &wake_at);
    if (batch.requests.empty()) continue;
    batch.id = next_batch_id_++;
    // `now` was read when the round began; a request pushed since (by a submitter, without the
    // loop's lock) may be in this batch already: it did not start before it arrived.
    for (auto& r : batch.requests) r->started = std::max(now, r->arrival);
    sink_.on_dispatch(static_cast<int>(i), batch, now);
    lane_idle_[i] = 0;
    lanes_[i]->dispatch(std::move(batch));
  }
  return wake_at;
}

TimeNs EventLoop::run_round() {
  std::vector<Failure> failures;
  TimeNs wake_at;
  {
    std::lock_guard<std::mutex> lock(mu_);
    pending_ = false;
    wake_at = step_locked(clock_.now(), failures);
  }
  for (auto& f : failures) sink_.fail(std::move(f.requests), f.code, f.why);
  return wake_at;
}

void EventLoop::observe(const BatchObservation& obs) {
  std::lock_guard<std::mutex> lock(mu_);
  policy_.observe(obs);
}

void EventLoop::run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    pending_ = false;
    std::vector<Failure> failures;
    TimeNs wake_at = kNever;
    try {
      wake_at = step_locked(clock_.now(), failures);
    } catch (const std::exception& e) {
      // A policy bug must not kill the loop (that would strand every future); report it.
      std::fprintf(stderr, "gpulanes: scheduling round failed: %s\n", e.what());
    }
    const bool done = finished_locked();
    if (!failures.empty()) {
      lock.unlock();
      for (auto& f : failures) sink_.fail(std::move(f.requests), f.code, f.why);
      lock.lock();
    }
    if (done) return;
    if (pending_) continue;
    loop_wake_at_ = wake_at;
    if (wake_at == kNever) {
      cv_.wait(lock, [&] { return pending_; });
    } else {
      const auto tp = std::chrono::steady_clock::time_point(std::chrono::nanoseconds(wake_at));
      cv_.wait_until(lock, tp, [&] { return pending_; });
    }
    loop_wake_at_ = kNever;  // awake: rounds run here until it sleeps again
  }
}

}  // namespace gpulanes
