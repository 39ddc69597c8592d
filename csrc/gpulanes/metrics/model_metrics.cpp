#include "gpulanes/metrics/model_metrics.h"

namespace gpulanes {

void ModelMetrics::on_result(TimeNs arrival, TimeNs started, TimeNs end, TimeNs deadline) {
  std::lock_guard<std::mutex> lock(mu_);
  (end <= deadline ? met_ : missed_)++;
  latency_ns_.record(end - arrival);
  queue_ns_.record(started - arrival);
  if (end > last_result_) last_result_ = end;
}

void ModelMetrics::on_failure(bool dropped) {
  std::lock_guard<std::mutex> lock(mu_);
  (dropped ? dropped_ : failed_)++;
}

void ModelMetrics::on_batch(int size, DurationNs exec_ns, DurationNs predicted_ns,
                            DurationNs actual_ns, int reruns) {
  std::lock_guard<std::mutex> lock(mu_);
  reruns_ += static_cast<std::uint64_t>(reruns);
  if (reruns == 0) prediction_.record(predicted_ns, actual_ns);  // re-runs are not its latency
  batches_++;
  batch_sizes_[size]++;
  batch_exec_ns_[size] += exec_ns;
  exec_ns_.record(exec_ns);
}

std::uint64_t ModelMetrics::in_flight() const {
  const std::uint64_t submitted = submitted_.load(std::memory_order_acquire);
  const std::uint64_t done = rejected_.load(std::memory_order_acquire);
  std::lock_guard<std::mutex> lock(mu_);
  const std::uint64_t all = done + met_ + missed_ + dropped_ + failed_;
  return submitted > all ? submitted - all : 0;
}

ModelStats ModelMetrics::snapshot(TimeNs now, TimeNs started_at) const {
  ModelStats s;
  s.name = name_;
  // Read the submit-side counters before the completion side: a request is counted submitted
  // before it can complete, so in_flight never underflows.
  s.submitted = submitted_.load(std::memory_order_acquire);
  s.rejected = rejected_.load(std::memory_order_acquire);
  std::lock_guard<std::mutex> lock(mu_);
  s.met = met_;
  s.missed = missed_;
  s.completed = met_ + missed_;
  s.dropped = dropped_;
  s.failed = failed_;
  s.batches = batches_;
  s.reruns = reruns_;
  const std::uint64_t done = s.completed + s.dropped + s.failed + s.rejected;
  s.in_flight = s.submitted > done ? s.submitted - done : 0;
  s.elapsed_s = started_at > 0 && now > started_at ? to_ms(now - started_at) / 1e3 : 0.0;
  s.goodput = s.elapsed_s > 0 ? s.met / s.elapsed_s : 0.0;
  s.throughput = s.elapsed_s > 0 ? s.completed / s.elapsed_s : 0.0;
  s.latency_ns = latency_ns_;
  s.queue_ns = queue_ns_;
  s.exec_ns = exec_ns_;
  s.batch_sizes = batch_sizes_;
  for (const auto& [size, ns] : batch_exec_ns_) s.batch_exec_ns[size] = static_cast<double>(ns);
  s.last_result = last_result_;
  std::uint64_t in_batches = 0;
  for (const auto& [size, count] : batch_sizes_) in_batches += static_cast<std::uint64_t>(size) * count;
  s.mean_batch_size = batches_ ? static_cast<double>(in_batches) / batches_ : 0.0;
  s.prediction = prediction_.stats();
  return s;
}

}  // namespace gpulanes
