// Lanes on simulated time and whatever decides how long their batches take. The runtime creates
// the lanes through the backend at start(); a driver on virtual time (VirtualDriver, the
// simulator) asks when the next batch ends, advances the clock and lets the backend report the
// batches that ended. Single-threaded: only the driving thread calls it (the runtime's event loop
// runs on that thread too, on virtual time).
#pragma once

#include <memory>
#include <vector>

#include "gpulanes/core/time.h"
#include "gpulanes/exec/lane.h"
#include "gpulanes/predict/latency_profile.h"

namespace gpulanes {

class VirtualBackend {
 public:
  virtual ~VirtualBackend() = default;
  // The lanes, indexed 0..n-1 in order; called once, by Runtime::start().
  virtual std::vector<std::unique_ptr<Lane>> make_lanes(const Clock& clock) = 0;
  // The profile the scheduler should use for `model` on `lane` when it is not the model's own
  // (a lane with a smaller SM share runs slower); null: the model's own. Valid while the
  // backend lives.
  virtual const LatencyProfile* lane_profile(int /*lane*/, int /*model*/) const { return nullptr; }
  // When the earliest running batch ends (kNever: none runs).
  virtual TimeNs next_end() const = 0;
  // Reports every batch that ends at or before the clock's time as finished, in end order.
  virtual void finish_due() = 0;
};

}  // namespace gpulanes
