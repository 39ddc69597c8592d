#include "gpulanes/core/clock.h"

#include <chrono>
#include <stdexcept>
#include <string>

namespace gpulanes {

TimeNs SteadyClock::now() const {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void VirtualClock::advance_to(TimeNs t) {
  TimeNs cur = now_.load(std::memory_order_relaxed);
  // CAS loop so concurrent advances never move time backwards.
  while (true) {
    if (t < cur) {
      throw std::invalid_argument("VirtualClock cannot go back from " + std::to_string(cur) +
                                  " to " + std::to_string(t));
    }
    if (now_.compare_exchange_weak(cur, t, std::memory_order_release, std::memory_order_relaxed)) {
      return;
    }
  }
}

void VirtualClock::advance_by(DurationNs d) {
  if (d < 0) throw std::invalid_argument("VirtualClock::advance_by needs d >= 0");
  now_.fetch_add(d, std::memory_order_acq_rel);
}

}  // namespace gpulanes
