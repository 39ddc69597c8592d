// How bursty each model's traffic is, measured the way it matters for a deadline: arrivals are
// counted in consecutive windows one SLO long, and the planner sizes lanes for a high quantile
// of that count rather than for the mean rate (a burst that arrives within one SLO must be
// served within about one SLO).
//
// Owns, per model, the count of the current window and the counts of the last kWindows
// windows. Any thread may call on_arrival() (a short per-model lock); snapshot() may run
// concurrently from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <atomic>
#include <mutex>
#include <vector>

#include "gpulanes/core/time.h"

namespace gpulanes {

// One model's traffic as seen so far.
struct TrafficShape {
  double rate = 0;        // requests/s over the windows seen
  double dispersion = -1; // variance / mean of the per-window count (Poisson: 1), the variance
                          // from successive windows' differences; < 0: unknown
  double cv = -1;         // sqrt(dispersion): for renewal arrivals, about the CV of the gaps
  double peak_rate = 0;   // 99th percentile of the per-window count, per second
  int windows = 0;        // complete windows the numbers come from
  DurationNs window_ns = 0;
};

class ArrivalShape {
 public:
  static constexpr int kWindows = 1024;  // windows kept per model
  static constexpr int kMinWindows = 20; // fewer: the shape is reported unknown

  // `windows_ns[m]`: model m's window length (its SLO), clamped to [1 ms, 10 s]. Room for
  // `capacity` models in all (add_model()).
  explicit ArrivalShape(const std::vector<DurationNs>& windows_ns, int capacity = 0);
  // The control thread: one more model (index: the count so far). Throws past capacity.
  void add_model(DurationNs window_ns);
  // The control thread: model `model`'s slot starts over for another model (no arrival of it
  // meanwhile; snapshot() may run).
  void reset_model(int model, DurationNs window_ns);

  void on_arrival(int model, TimeNs now);
  // Per model, from the windows completed by `now` (an idle stretch counts as empty windows).
  std::vector<TrafficShape> snapshot(TimeNs now) const;

 private:
  struct Model {
    mutable std::mutex mu;                 // guards the fields below
    DurationNs window = 0;                 // one SLO
    std::int64_t current = -1;             // index of the window being counted (-1: none yet)
    std::int64_t count = 0;                // arrivals in it
    std::vector<std::int64_t> ring;        // counts of completed windows, ring of kWindows
    std::int64_t completed = 0;            // windows completed in all
    void roll_to(std::int64_t index);      // completes windows up to index - 1
  };
  std::vector<std::unique_ptr<Model>> models_;  // capacity reserved: never reallocated
  std::atomic<int> count_{0};                    // entries of models_ others may read
};

// The requests/s a lane must serve within one window to keep up with the 99th-percentile burst
// of `rate` at dispersion `dispersion` (variance / mean of counts in windows of `window_ns`):
// rate + z sqrt(dispersion rate / window), z = 2.326 (normal approximation of the count).
double burst_rate(double rate, double dispersion, DurationNs window_ns);
// Its inverse: the mean rate whose burst_rate is `burst`.
double mean_for_burst(double burst, double dispersion, DurationNs window_ns);

}  // namespace gpulanes
