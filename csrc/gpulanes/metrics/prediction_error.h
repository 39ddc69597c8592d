// How far batch-latency predictions were from what the lane measured, over a sliding window of
// recent batches. Not thread-safe: the owner (ModelMetrics) serializes access.
#pragma once

#include <cstddef>
#include <deque>

#include "gpulanes/core/time.h"

namespace gpulanes {

struct PredictionErrorStats {
  std::size_t batches = 0;    // predictions in the window
  double mape = 0;            // mean |actual - predicted| / actual
  double bias = 0;            // mean (actual - predicted) / actual: > 0 means predictions run low
  double p99_abs_ms = 0;      // 99th percentile of |actual - predicted|, milliseconds
};

class PredictionErrorWindow {
 public:
  explicit PredictionErrorWindow(std::size_t window = 256) : window_(window) {}

  // One batch: what was predicted when it was chosen and what it took. Ignored when either is
  // unknown (<= 0).
  void record(DurationNs predicted_ns, DurationNs actual_ns);
  PredictionErrorStats stats() const;

 private:
  struct Sample {
    DurationNs predicted_ns;
    DurationNs actual_ns;
  };
  std::size_t window_;         // samples kept
  std::deque<Sample> recent_;  // newest last
};

}  // namespace gpulanes
