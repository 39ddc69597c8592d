#include "gpulanes/metrics/prediction_error.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace gpulanes {

void PredictionErrorWindow::record(DurationNs predicted_ns, DurationNs actual_ns) {
  if (predicted_ns <= 0 || actual_ns <= 0) return;
  recent_.push_back({predicted_ns, actual_ns});
  if (recent_.size() > window_) recent_.pop_front();
}

PredictionErrorStats PredictionErrorWindow::stats() const {
  PredictionErrorStats s;
  s.batches = recent_.size();
  if (recent_.empty()) return s;
  std::vector<DurationNs> abs_err;
  abs_err.reserve(recent_.size());
  for (const Sample& x : recent_) {
    const double err = static_cast<double>(x.actual_ns - x.predicted_ns);
    s.mape += std::abs(err) / x.actual_ns;
    s.bias += err / x.actual_ns;
    abs_err.push_back(std::abs(x.actual_ns - x.predicted_ns));
  }
  s.mape /= recent_.size();
  s.bias /= recent_.size();
  // Nearest rank, as the deadline policy's margin is.
  const auto k = static_cast<std::size_t>(std::ceil(0.99 * abs_err.size())) - 1;
  std::nth_element(abs_err.begin(), abs_err.begin() + k, abs_err.end());
  s.p99_abs_ms = to_ms(abs_err[k]);
  return s;
}

}  // namespace gpulanes
