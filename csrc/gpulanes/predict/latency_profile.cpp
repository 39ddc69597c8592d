#include "gpulanes/predict/latency_profile.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>

namespace gpulanes {

LatencyProfile::LatencyProfile(const std::vector<LatencyPoint>& points) {
  for (const auto& p : points) {
    if (p.batch_size < 1 || p.p50_us < 0) throw std::invalid_argument("bad latency point");
    points_[p.batch_size] = p;
  }
}

std::vector<LatencyPoint> LatencyProfile::points() const {
  std::vector<LatencyPoint> out;
  for (const auto& [b, p] : points_) out.push_back(p);
  return out;
}

DurationNs LatencyProfile::predict(int batch_size) const {
  if (points_.empty()) return 0;
  auto hi = points_.lower_bound(batch_size);
  double us;
  if (hi != points_.end() && hi->first == batch_size) {
    us = hi->second.p50_us;
  } else if (hi == points_.begin()) {
    // Below the smallest measured size: scale down proportionally, never below 0.
    us = hi->second.p50_us * batch_size / hi->first;
  } else if (hi == points_.end()) {
    auto last = std::prev(points_.end());
    if (last == points_.begin()) {
      us = last->second.p50_us * batch_size / last->first;
    } else {
      auto before = std::prev(last);
      const double slope = (last->second.p50_us - before->second.p50_us) /
                           (last->first - before->first);
      us = last->second.p50_us + std::max(0.0, slope) * (batch_size - last->first);
    }
  } else {
    auto lo = std::prev(hi);
    const double t = static_cast<double>(batch_size - lo->first) / (hi->first - lo->first);
    us = lo->second.p50_us + t * (hi->second.p50_us - lo->second.p50_us);
  }
  return static_cast<DurationNs>(std::llround(std::max(0.0, us) * 1e3));
}

double LatencyProfile::interpolate(int b, double LatencyPoint::*field) const {
  if (points_.empty()) return 0.0;
  auto hi = points_.lower_bound(b);
  if (hi == points_.end()) return std::prev(hi)->second.*field;
  if (hi->first == b || hi == points_.begin()) return hi->second.*field;
  auto lo = std::prev(hi);
  const double t = static_cast<double>(b - lo->first) / (hi->first - lo->first);
  return lo->second.*field + t * (hi->second.*field - lo->second.*field);
}

LatencyPoint summarize_samples(int batch_size, std::vector<DurationNs> samples) {
  LatencyPoint p;
  p.batch_size = batch_size;
  p.samples = static_cast<int>(samples.size());
  if (samples.empty()) return p;
  std::sort(samples.begin(), samples.end());
  auto at = [&](double q) {
    const auto i = static_cast<std::size_t>(std::ceil(q * samples.size())) - 1;
    return samples[std::min(i, samples.size() - 1)] / 1e3;
  };
  p.mean_us = std::accumulate(samples.begin(), samples.end(), 0.0) / samples.size() / 1e3;
  p.p50_us = at(0.5);
  p.p99_us = at(0.99);
  return p;
}

}  // namespace gpulanes
