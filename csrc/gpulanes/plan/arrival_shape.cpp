#include "gpulanes/plan/arrival_shape.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace gpulanes {

namespace {
constexpr double kZ99 = 2.326;  // standard normal 99th percentile
}

ArrivalShape::ArrivalShape(const std::vector<DurationNs>& windows_ns, int capacity) {
  models_.reserve(static_cast<std::size_t>(std::max<int>(capacity, windows_ns.size())));
  for (DurationNs w : windows_ns) add_model(w);
}

void ArrivalShape::add_model(DurationNs window_ns) {
  if (models_.size() == models_.capacity()) {
    throw std::length_error("ArrivalShape: no room for another model");
  }
  auto m = std::make_unique<Model>();
  m->window = std::clamp<DurationNs>(window_ns, from_ms(1), from_ms(10'000));
  m->ring.assign(kWindows, 0);
  models_.push_back(std::move(m));
  count_.store(static_cast<int>(models_.size()), std::memory_order_release);
}

void ArrivalShape::reset_model(int model, DurationNs window_ns) {
  Model& m = *models_.at(static_cast<std::size_t>(model));
  std::lock_guard<std::mutex> lock(m.mu);
  m.window = std::clamp<DurationNs>(window_ns, from_ms(1), from_ms(10'000));
  m.current = -1;
  m.count = 0;
  std::fill(m.ring.begin(), m.ring.end(), 0);
  m.completed = 0;
}

void ArrivalShape::Model::roll_to(std::int64_t index) {
  if (current < 0) {
    current = index;
    return;
  }
  // Complete the current window, then the empty ones up to `index` (at most a ring's worth).
  const std::int64_t gap = std::min<std::int64_t>(index - current, kWindows);
  for (std::int64_t k = 0; k < gap; ++k) {
    ring[completed % kWindows] = k == 0 ? count : 0;
    ++completed;
  }
  current = index;
  count = 0;
}

void ArrivalShape::on_arrival(int model, TimeNs now) {
  Model& m = *models_[model];
  std::lock_guard<std::mutex> lock(m.mu);  // window too: reset_model() changes it
  const std::int64_t index = now / m.window;
  if (index > m.current) m.roll_to(index);
  ++m.count;  // a racing earlier timestamp counts in the current window
}

std::vector<TrafficShape> ArrivalShape::snapshot(TimeNs now) const {
  std::vector<TrafficShape> out;
  const int n = count_.load(std::memory_order_acquire);
  for (int i = 0; i < n; ++i) {
    const Model& m = *models_[static_cast<std::size_t>(i)];
    std::vector<std::int64_t> counts;  // newest first
    DurationNs window = 0;
    {
      std::lock_guard<std::mutex> lock(m.mu);
      window = m.window;
      const std::int64_t index = now / window;
      if (m.current >= 0 && index > m.current) {
        // Windows elapsed since the last arrival: empty ones, then the one being counted.
        const std::int64_t empty = std::min<std::int64_t>(index - m.current - 1, kWindows);
        counts.assign(static_cast<std::size_t>(empty), 0);
        counts.push_back(m.count);
      }
      const std::int64_t n = std::min<std::int64_t>(m.completed, kWindows);
      for (std::int64_t k = 0; k < n && counts.size() < kWindows; ++k) {
        counts.push_back(m.ring[(m.completed - 1 - k) % kWindows]);
      }
    }
    TrafficShape t;
    t.window_ns = window;
    t.windows = static_cast<int>(counts.size());
    if (counts.empty()) {
      out.push_back(t);
      continue;
    }
    double sum = 0, sq_step = 0;
    for (std::size_t k = 0; k < counts.size(); ++k) {
      sum += static_cast<double>(counts[k]);
      if (k > 0) {
        const double step = static_cast<double>(counts[k] - counts[k - 1]);
        sq_step += step * step;
      }
    }
    const double n = static_cast<double>(counts.size());
    const double mean = sum / n;
    // Variance from successive differences (E (c_k - c_k-1)^2 = 2 var for independent
    // windows): a change of rate, one large step, is not mistaken for burstiness.
    const double var = counts.size() > 1 ? sq_step / (2 * (n - 1)) : 0.0;
    const double secs = static_cast<double>(window) / 1e9;
    t.rate = mean / secs;
    if (t.windows >= kMinWindows && mean > 0) {
      t.dispersion = var / mean;
      t.cv = std::sqrt(t.dispersion);
      std::vector<std::int64_t> sorted = counts;
      const auto k = static_cast<std::size_t>(std::ceil(0.99 * n)) - 1;
      std::nth_element(sorted.begin(), sorted.begin() + k, sorted.end());
      t.peak_rate = static_cast<double>(sorted[k]) / secs;
    } else {
      t.peak_rate = t.rate;
    }
    out.push_back(t);
  }
  return out;
}

double burst_rate(double rate, double dispersion, DurationNs window_ns) {
  if (rate <= 0 || dispersion <= 0 || window_ns <= 0) return std::max(0.0, rate);
  return rate + kZ99 * std::sqrt(dispersion * rate / (static_cast<double>(window_ns) / 1e9));
}

}  // namespace gpulanes

namespace gpulanes {

double mean_for_burst(double burst, double dispersion, DurationNs window_ns) {
  if (burst <= 0) return 0;
  if (dispersion <= 0 || window_ns <= 0) return burst;
  // r + a sqrt(r) = burst, a = z sqrt(dispersion / window): a quadratic in sqrt(r).
  const double a = kZ99 * std::sqrt(dispersion / (static_cast<double>(window_ns) / 1e9));
  const double root = (-a + std::sqrt(a * a + 4 * burst)) / 2;
  return root * root;
}

}  // namespace gpulanes
