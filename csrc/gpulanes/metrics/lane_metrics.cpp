#include "gpulanes/metrics/lane_metrics.h"

namespace gpulanes {

void LaneMetrics::on_batch(const std::string& model, int size, int met, int missed, int failed,
                           DurationNs duration_ns) {
  std::lock_guard<std::mutex> lock(mu_);
  batches_++;
  requests_ += static_cast<std::uint64_t>(size);
  met_ += static_cast<std::uint64_t>(met);
  missed_ += static_cast<std::uint64_t>(missed);
  failed_ += static_cast<std::uint64_t>(failed);
  busy_ns_ += duration_ns;
  batch_ns_.record(duration_ns);
  by_model_[model]++;
}

LaneStats LaneMetrics::snapshot(TimeNs now, TimeNs started_at) const {
  LaneStats s;
  s.index = index_;
  s.kind = kind_;
  s.device = device_;
  std::lock_guard<std::mutex> lock(mu_);
  s.batches = batches_;
  s.requests = requests_;
  s.met = met_;
  s.missed = missed_;
  s.failed = failed_;
  s.busy_s = to_ms(busy_ns_) / 1e3;
  s.elapsed_s = started_at > 0 && now > started_at ? to_ms(now - started_at) / 1e3 : 0.0;
  s.busy_fraction = s.elapsed_s > 0 ? s.busy_s / s.elapsed_s : 0.0;
  s.mean_batch_size = batches_ ? static_cast<double>(requests_) / batches_ : 0.0;
  s.batch_ns = batch_ns_;
  s.batches_by_model = by_model_;
  return s;
}

}  // namespace gpulanes
