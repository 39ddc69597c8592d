// One model's latency and resource intensity per (batch size, lane SM share), and its memory
// footprint: what the planner sizes lanes with and the simulator runs batches by. Built from profile-file entries (the
// gpulanes.profiles schema: one entry per measured share). Shares between measured ones are
// interpolated linearly in 1/share for latency (exact when latency is inversely proportional to
// the SMs a batch can use) and linearly in share for bandwidth use; below the smallest share
// latency grows as 1/share, above the largest it stays.
// Immutable once built; any thread may read it.
#pragma once

#include <map>
#include <vector>

#include "gpulanes/core/time.h"
#include "gpulanes/predict/latency_profile.h"

namespace gpulanes {

// One measured share: the latency profile and, per batch size, the fraction of the GPU's L2 and
// DRAM bandwidth a batch uses while it runs alone (0..1).
struct SharePoints {
  double share = 1.0;                 // fraction of the GPU's SMs
  std::vector<LatencyPoint> points;   // p50_us per batch size
  std::map<int, double> l2, dram;     // batch size -> utilization; empty: 0
};

class ShareProfile {
 public:
  ShareProfile() = default;
  // Throws Error(kInvalidInput) for no shares, a share outside (0, 1] or an empty point list.
  ShareProfile(std::vector<SharePoints> shares, double memory_mb);

  // Solo latency of a batch of `b` on a lane with `share` of the SMs.
  DurationNs solo_ns(int b, double share) const;
  double l2(int b, double share) const { return intensity(b, share, &SharePoints::l2); }
  double dram(int b, double share) const { return intensity(b, share, &SharePoints::dram); }
  double memory_mb() const { return memory_mb_; }
  // The profile the scheduler uses on a lane with `share` (p50 of solo_ns per profiled size).
  LatencyProfile profile_at(double share) const;

 private:
  struct Share {
    double share;
    LatencyProfile latency;
    std::map<int, double> l2, dram;
  };
  // The bracketing measured shares and the weight of the upper one, linear in 1/share
  // (`inverse`) or in share.
  void bracket(double share, const Share** lo, const Share** hi, double* w, bool inverse) const;
  double intensity(int b, double share, std::map<int, double> SharePoints::*which) const;

  std::vector<Share> shares_;     // by increasing share
  std::vector<int> batch_sizes_;  // profiled sizes (union over shares)
  double memory_mb_ = 0;          // weights + workspace, per lane that holds the model
};

// Linear interpolation over a map keyed by batch size (flat beyond the ends; 0 when empty).
double interpolate_by_batch(const std::map<int, double>& values, int b);

}  // namespace gpulanes
