// Profiled batch latency of one model on one kind of lane: per measured batch size the mean,
// median and 99th percentile in microseconds and the number of samples. Batch sizes between
// measured ones are interpolated linearly, sizes beyond the largest extrapolated from the last two
// points. Read-only once the runtime serves, so any thread may predict without a lock.
#pragma once

#include <map>
#include <vector>

#include "gpulanes/core/time.h"

namespace gpulanes {

struct LatencyPoint {
  int batch_size = 1;
  double mean_us = 0;
  double p50_us = 0;
  double p99_us = 0;
  int samples = 0;
  double device_p50_us = 0;  // median device time (CUDA events) of the same runs; 0: not measured
  double l2 = 0;             // fraction of L2 bandwidth a batch uses alone (0: unknown/none)
  double dram = 0;           // fraction of DRAM bandwidth
};

class LatencyProfile {
 public:
  LatencyProfile() = default;
  explicit LatencyProfile(const std::vector<LatencyPoint>& points);

  bool empty() const { return points_.empty(); }
  std::vector<LatencyPoint> points() const;

  // Predicted median latency of a batch of `batch_size` (>= 1); 0 when the profile is empty.
  DurationNs predict(int batch_size) const;
  // Resource use of a batch of `batch_size`, interpolated between points (flat beyond them).
  double l2(int batch_size) const { return interpolate(batch_size, &LatencyPoint::l2); }
  double dram(int batch_size) const { return interpolate(batch_size, &LatencyPoint::dram); }

 private:
  double interpolate(int batch_size, double LatencyPoint::*field) const;
  std::map<int, LatencyPoint> points_;  // by batch size
};

// Summarizes timed samples (ns) of one batch size into a point.
LatencyPoint summarize_samples(int batch_size, std::vector<DurationNs> samples);

}  // namespace gpulanes
