#include "gpulanes/runtime/virtual_driver.h"

#include <algorithm>

namespace gpulanes {

VirtualDriver::VirtualDriver(Runtime& runtime, VirtualClock& clock)
    : runtime_(runtime), clock_(clock) {}

void VirtualDriver::at(TimeNs t, std::function<void()> action) {
  actions_.emplace(t, std::move(action));
}

void VirtualDriver::run_until(TimeNs until) {
  const auto lanes = runtime_.virtual_lanes();
  while (true) {
    // A round just ran at now(): the policy's next round is strictly later (else it would spin).
    TimeNs next = std::max(runtime_.run_round(), clock_.now() + 1);
    for (VirtualLane* lane : lanes) {
      if (auto t = lane->busy_until()) next = std::min(next, *t);
    }
    if (!actions_.empty()) next = std::min(next, actions_.begin()->first);
    if (next == kNever || next > until) return;
    if (next > clock_.now()) clock_.advance_to(next);
    for (VirtualLane* lane : lanes) {
      if (auto t = lane->busy_until(); t && *t <= clock_.now()) lane->finish();
    }
    while (!actions_.empty() && actions_.begin()->first <= clock_.now()) {
      auto action = std::move(actions_.begin()->second);
      actions_.erase(actions_.begin());
      action();
    }
  }
}

}  // namespace gpulanes
