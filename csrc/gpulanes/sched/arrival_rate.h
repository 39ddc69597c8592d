// Recent arrival gaps of one model, as an EWMA, updated by submitting threads without a lock and
// read by the event loop. Racing updates may lose one sample's weight: this is an estimate that
// decides whether waiting for more requests is worthwhile, not an accounting.
#pragma once

#include <atomic>

#include "gpulanes/core/time.h"

namespace gpulanes {

class ArrivalRate {
 public:
  explicit ArrivalRate(double alpha = 0.1) : alpha_(alpha) {}

  void on_arrival(TimeNs t) {
    const TimeNs prev = last_.exchange(t, std::memory_order_relaxed);
    if (prev == 0 || t < prev) return;
    const double gap = static_cast<double>(t - prev);
    const double old = gap_ns_.load(std::memory_order_relaxed);
    gap_ns_.store(old < 0 ? gap : old + alpha_ * (gap - old), std::memory_order_relaxed);
  }

  // The latest arrival (0: none yet).
  TimeNs last() const { return last_.load(std::memory_order_relaxed); }

  // Smoothed gap between arrivals; kNever until two arrivals were seen.
  DurationNs mean_gap() const {
    const double g = gap_ns_.load(std::memory_order_relaxed);
    return g < 0 ? kNever : static_cast<DurationNs>(g);
  }

 private:
  const double alpha_;                // EWMA weight of the newest gap
  std::atomic<TimeNs> last_{0};       // previous arrival
  std::atomic<double> gap_ns_{-1.0};  // EWMA of gaps; < 0: none yet
};

}  // namespace gpulanes
