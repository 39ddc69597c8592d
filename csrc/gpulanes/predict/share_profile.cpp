#include "gpulanes/predict/share_profile.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <stdexcept>

#include "gpulanes/core/error.h"

namespace gpulanes {

double interpolate_by_batch(const std::map<int, double>& values, int b) {
  if (values.empty()) return 0.0;
  auto hi = values.lower_bound(b);
  if (hi == values.end()) return std::prev(hi)->second;
  if (hi->first == b || hi == values.begin()) return hi->second;
  auto lo = std::prev(hi);
  const double t = static_cast<double>(b - lo->first) / (hi->first - lo->first);
  return lo->second + t * (hi->second - lo->second);
}

ShareProfile::ShareProfile(std::vector<SharePoints> shares, double memory_mb)
    : memory_mb_(memory_mb) {
  if (shares.empty()) throw Error(ErrorCode::kInvalidInput, "a simulated model needs a profile");
  std::set<int> sizes;
  for (auto& s : shares) {
    if (!(s.share > 0 && s.share <= 1)) {
      throw Error(ErrorCode::kInvalidInput, "profile share must be in (0, 1]");
    }
    if (s.points.empty()) throw Error(ErrorCode::kInvalidInput, "profile share has no points");
    for (const auto& p : s.points) sizes.insert(p.batch_size);
    try {
      shares_.push_back({s.share, LatencyProfile(s.points), std::move(s.l2), std::move(s.dram)});
    } catch (const std::invalid_argument& e) {
      throw Error(ErrorCode::kInvalidInput, std::string("bad profile: ") + e.what());
    }
  }
  std::sort(shares_.begin(), shares_.end(), [](const Share& a, const Share& b) { return a.share < b.share; });
  batch_sizes_.assign(sizes.begin(), sizes.end());
}

void ShareProfile::bracket(double share, const Share** lo, const Share** hi, double* w,
                              bool inverse) const {
  if (share <= shares_.front().share) {
    *lo = *hi = &shares_.front();
    *w = 0;
    return;
  }
  if (share >= shares_.back().share) {
    *lo = *hi = &shares_.back();
    *w = 0;
    return;
  }
  auto it = std::lower_bound(shares_.begin(), shares_.end(), share,
                             [](const Share& s, double v) { return s.share < v; });
  *hi = &*it;
  *lo = &*std::prev(it);
  // 0 at lo, 1 at hi; linear in 1/share (latency) or in share (bandwidth use).
  *w = inverse ? (1.0 / (*lo)->share - 1.0 / share) / (1.0 / (*lo)->share - 1.0 / (*hi)->share)
               : (share - (*lo)->share) / ((*hi)->share - (*lo)->share);
}

DurationNs ShareProfile::solo_ns(int b, double share) const {
  const Share *lo, *hi;
  double w;
  bracket(share, &lo, &hi, &w, /*inverse=*/true);
  double ns = (1 - w) * lo->latency.predict(b) + w * hi->latency.predict(b);
  if (share < shares_.front().share) ns *= shares_.front().share / share;
  return static_cast<DurationNs>(std::llround(ns));
}

double ShareProfile::intensity(int b, double share,
                                  std::map<int, double> SharePoints::*which) const {
  const Share *lo, *hi;
  double w;
  bracket(share, &lo, &hi, &w, /*inverse=*/false);
  auto pick = [&](const Share* s) { return which == &SharePoints::l2 ? &s->l2 : &s->dram; };
  return (1 - w) * interpolate_by_batch(*pick(lo), b) + w * interpolate_by_batch(*pick(hi), b);
}

LatencyProfile ShareProfile::profile_at(double share) const {
  std::vector<LatencyPoint> points;
  for (int b : batch_sizes_) {
    LatencyPoint p;
    p.batch_size = b;
    p.p50_us = p.mean_us = p.p99_us = solo_ns(b, share) / 1e3;
    p.l2 = l2(b, share);
    p.dram = dram(b, share);
    points.push_back(p);
  }
  return LatencyProfile(points);
}

}  // namespace gpulanes
