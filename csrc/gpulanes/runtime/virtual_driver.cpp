#include "gpulanes/runtime/virtual_driver.h"

#include <algorithm>

namespace gpulanes {

VirtualDriver::VirtualDriver(Runtime& runtime, VirtualClock& clock)
    : runtime_(runtime), clock_(clock) {}

void VirtualDriver::at(TimeNs t, std::function<void()> action) {
  actions_.emplace(t, std::move(action));
}

void VirtualDriver::run_until(TimeNs until) {
  VirtualBackend& backend = *runtime_.virtual_backend();
  while (true) {
    // A round just ran at now(): the policy's next round is strictly later (else it would spin).
    TimeNs next = std::max(runtime_.run_round(), clock_.now() + 1);
    next = std::min(next, backend.next_end());
    if (!actions_.empty()) next = std::min(next, actions_.begin()->first);
    if (next == kNever || next > until) return;
    if (next > clock_.now()) clock_.advance_to(next);
    backend.finish_due();
    while (!actions_.empty() && actions_.begin()->first <= clock_.now()) {
      auto action = std::move(actions_.begin()->second);
      actions_.erase(actions_.begin());
      action();
    }
  }
}

}  // namespace gpulanes
