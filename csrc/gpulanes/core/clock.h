// One interface for "what time is it", so the same event loop runs on wall time (SteadyClock,
// real runtime) and on simulated time (VirtualClock, simulator and deterministic tests).
#pragma once

#include <atomic>

#include "gpulanes/core/time.h"

namespace gpulanes {

class Clock {
 public:
  virtual ~Clock() = default;
  // Current time. Thread-safe; never goes backwards.
  virtual TimeNs now() const = 0;
  // True when time only moves when someone advances it (no point in sleeping on it).
  virtual bool is_virtual() const = 0;
};

// CLOCK_MONOTONIC through std::chrono::steady_clock.
class SteadyClock final : public Clock {
 public:
  TimeNs now() const override;
  bool is_virtual() const override { return false; }
};

// Simulated time: starts at `start` and moves only by advance_to/advance_by. Readers on any
// thread see a value at least as new as the last completed advance (acquire/release).
class VirtualClock final : public Clock {
 public:
  explicit VirtualClock(TimeNs start = 0) : now_(start) {}
  TimeNs now() const override { return now_.load(std::memory_order_acquire); }
  bool is_virtual() const override { return true; }
  // Moves time forward to `t`; throws std::invalid_argument if `t` is in the past.
  void advance_to(TimeNs t);
  // Moves time forward by `d` >= 0.
  void advance_by(DurationNs d);

 private:
  std::atomic<TimeNs> now_;  // current virtual time
};

}  // namespace gpulanes
