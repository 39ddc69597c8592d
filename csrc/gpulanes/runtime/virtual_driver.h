// Drives a Runtime on virtual time (device "virtual", a VirtualClock): scripted actions (such as
// submits), event-loop rounds and virtual-lane completions happen in time order on the calling
// thread, with no sleeping and no other threads, so a run is deterministic. The scheduling code
// is the runtime's own: the same event loop and policy objects as on real lanes.
#pragma once

#include <functional>
#include <map>

#include "gpulanes/core/clock.h"
#include "gpulanes/runtime/runtime.h"

namespace gpulanes {

class VirtualDriver {
 public:
  // `runtime` must be started and use `clock`.
  VirtualDriver(Runtime& runtime, VirtualClock& clock);

  // Runs `action` when virtual time reaches `t` (actions at equal times run in the order given).
  void at(TimeNs t, std::function<void()> action);
  // Processes everything up to `until` (kNever: until nothing is left to do); the clock ends at
  // the last event processed.
  void run_until(TimeNs until = kNever);

 private:
  Runtime& runtime_;
  VirtualClock& clock_;
  std::multimap<TimeNs, std::function<void()>> actions_;  // pending, by time
};

}  // namespace gpulanes
