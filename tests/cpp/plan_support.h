// A latency profile for planner tests: base + per_sample x b microseconds at the whole GPU for
// b = 1..max_batch (smaller shares: latency / share), no L2 or DRAM use.
#pragma once

#include "gpulanes/predict/share_profile.h"

namespace gpulanes::testing {

inline ShareProfile linear_profile(double base_us, double per_sample_us, int max_batch = 8) {
  SharePoints whole;
  for (int b = 1; b <= max_batch; ++b) {
    LatencyPoint p;
    p.batch_size = b;
    p.p50_us = p.mean_us = p.p99_us = base_us + per_sample_us * b;
    whole.points.push_back(p);
  }
  return ShareProfile({whole}, 100);
}

}  // namespace gpulanes::testing
