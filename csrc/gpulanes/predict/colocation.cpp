#include "gpulanes/predict/colocation.h"

#include <algorithm>

namespace gpulanes {

CoLocation::CoLocation(std::vector<int> lane_device, std::vector<double> lane_share, double alpha,
                       Backlog backlog)
    : alpha_(alpha), backlog_(std::move(backlog)), share_(std::move(lane_share)) {
  const std::size_t n = lane_device.size();
  peers_.resize(n);
  for (std::size_t a = 0; a < n; ++a) {
    for (std::size_t b = 0; b < n; ++b) {
      if (a != b && lane_device[a] == lane_device[b]) peers_[a].push_back(static_cast<int>(b));
    }
  }
  running_.resize(n);
  history_.resize(n);
  ewma_l2_.assign(n, 0.0);
  ewma_dram_.assign(n, 0.0);
}

CoLocation::Features CoLocation::features(int lane, TimeNs now, DurationNs solo, double l2,
                                          double dram, bool coarse) const {
  const double s = solo / 1e6;
  // Queues have their own locks: read them before taking ours.
  std::vector<char> queued(peers_[lane].size(), 0);
  if (backlog_ && !coarse) {
    for (std::size_t k = 0; k < queued.size(); ++k) queued[k] = backlog_(peers_[lane][k]) ? 1 : 0;
  }
  double ov = 0, ov_l2 = 0, ov_dram = 0, e_l2 = 0, e_dram = 0, next_l2 = 0, next_dram = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (std::size_t k = 0; k < peers_[lane].size(); ++k) {
      const int o = peers_[lane][k];
      const auto& r = running_[o];
      double frac = 0.0;
      if (r) {
        frac = 1.0;
        if (!coarse) {
          frac = solo > 0 ? std::clamp(static_cast<double>(r->end - now) / solo, 0.0, 1.0) : 0.0;
        }
        ov += frac;
        ov_l2 += frac * r->l2;
        ov_dram += frac * r->dram;
      }
      // Its next batch's use is unknown: its latest batch's stands in.
      const Interval* latest = r ? &*r : history_[o].empty() ? nullptr : &history_[o].back();
      if (queued[k] && latest) {
        next_l2 += (1.0 - frac) * latest->l2;
        next_dram += (1.0 - frac) * latest->dram;
      }
    }
    if (!coarse) {
      e_l2 = ewma_l2_[lane];
      e_dram = ewma_dram_[lane];
    }
  }
  return {1.0, s, share_[lane], s * ov, s * ov * l2, s * ov_l2, s * ov * dram, s * ov_dram,
          s * e_l2, s * e_dram, s * next_l2, s * next_dram};
}

void CoLocation::on_start(int lane, TimeNs start, TimeNs expected_end, double l2, double dram) {
  std::lock_guard<std::mutex> lock(mu_);
  running_[lane] = Interval{start, expected_end, l2, dram};
}

void CoLocation::on_finish(int lane, TimeNs end) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& mine = running_[lane];
  if (!mine) return;
  const TimeNs start = mine->start;
  const double span = static_cast<double>(std::max<DurationNs>(1, end - start));
  // Time-average over [start, end] of the co-runners' summed resource use.
  double l2 = 0, dram = 0;
  auto add = [&](const Interval& iv, TimeNs iv_end) {
    const double overlap = static_cast<double>(std::min(end, iv_end) - std::max(start, iv.start));
    if (overlap <= 0) return;
    l2 += overlap / span * iv.l2;
    dram += overlap / span * iv.dram;
  };
  for (int o : peers_[lane]) {
    for (const Interval& iv : history_[o]) add(iv, iv.end);
    if (running_[o]) add(*running_[o], end);  // still running: overlaps up to now
  }
  ewma_l2_[lane] += alpha_ * (l2 - ewma_l2_[lane]);
  ewma_dram_[lane] += alpha_ * (dram - ewma_dram_[lane]);
  auto& h = history_[lane];
  h.push_back(Interval{start, end, mine->l2, mine->dram});
  if (h.size() > kHistory) h.pop_front();
  mine.reset();
}

std::pair<double, double> CoLocation::ewma(int lane) const {
  std::lock_guard<std::mutex> lock(mu_);
  return {ewma_l2_[lane], ewma_dram_[lane]};
}

}  // namespace gpulanes
