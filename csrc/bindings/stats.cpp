// Conversions shared by the Runtime and Simulator bindings: statistics to dicts, the trace to
// columns, policy options from a dict.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "bindings.h"

namespace gpulanes::bindings {

py::dict summary_ms(const LogHistogram& h) {
  py::dict d;
  d["count"] = h.count();
  d["mean"] = to_ms(static_cast<DurationNs>(h.mean()));
  d["p50"] = h.percentile(0.50) / 1e6;
  d["p90"] = h.percentile(0.90) / 1e6;
  d["p99"] = h.percentile(0.99) / 1e6;
  d["p999"] = h.percentile(0.999) / 1e6;
  d["max"] = to_ms(h.max());
  return d;
}

py::dict stats_dict(const ModelStats& s) {
  py::dict d;
  d["submitted"] = s.submitted;
  d["completed"] = s.completed;
  d["met"] = s.met;
  d["missed"] = s.missed;
  d["dropped"] = s.dropped;
  d["rejected"] = s.rejected;
  d["failed"] = s.failed;
  d["in_flight"] = s.in_flight;
  d["batches"] = s.batches;
  d["reruns"] = s.reruns;
  d["elapsed_s"] = s.elapsed_s;
  d["goodput"] = s.goodput;
  d["throughput"] = s.throughput;
  d["latency_ms"] = summary_ms(s.latency_ns);
  d["queue_ms"] = summary_ms(s.queue_ns);
  d["exec_ms"] = summary_ms(s.exec_ns);
  py::dict sizes;
  for (const auto& [size, count] : s.batch_sizes) sizes[py::int_(size)] = count;
  d["batch_sizes"] = sizes;
  py::dict exec_by_size;
  for (const auto& [size, ns] : s.batch_exec_ns) exec_by_size[py::int_(size)] = ns / 1e6;
  d["batch_exec_ms"] = exec_by_size;  // batch size -> forward time of those batches, summed
  // the latest result's end, in the runtime clock's seconds (time.monotonic() in real time)
  d["last_result_s"] = s.last_result > 0 ? py::object(py::float_(s.last_result / 1e9)) : py::none();
  d["mean_batch_size"] = s.mean_batch_size;
  py::dict pred;
  pred["batches"] = s.prediction.batches;
  pred["mape"] = s.prediction.mape;
  pred["bias"] = s.prediction.bias;
  pred["p99_abs_ms"] = s.prediction.p99_abs_ms;
  d["prediction_error"] = pred;
  return d;
}

py::dict lane_stats_dict(const LaneStats& s) {
  py::dict d;
  d["index"] = s.index;
  d["kind"] = s.kind;
  d["device"] = s.device;
  d["batches"] = s.batches;
  d["requests"] = s.requests;
  d["met"] = s.met;
  d["missed"] = s.missed;
  d["failed"] = s.failed;
  d["busy_s"] = s.busy_s;
  d["elapsed_s"] = s.elapsed_s;
  d["busy_fraction"] = s.busy_fraction;
  d["mean_batch_size"] = s.mean_batch_size;
  d["batch_ms"] = summary_ms(s.batch_ns);
  py::dict by_model;
  for (const auto& [name, n] : s.batches_by_model) by_model[py::str(name)] = n;
  d["batches_by_model"] = by_model;
  return d;
}

// The policy knobs from Python's `policy_options` (already validated and renamed there).
PolicyConfig policy_config_from(const py::dict& o) {
  PolicyConfig c;
  auto us = [](const py::handle& v) { return from_us(v.cast<double>()); };
  if (o.contains("preferred_batch_size")) c.preferred_batch_sizes = o["preferred_batch_size"].cast<std::vector<int>>();
  if (o.contains("max_queue_delay_microseconds")) c.max_queue_delay_ns = us(o["max_queue_delay_microseconds"]);
  if (o.contains("default_timeout_microseconds")) c.queue_timeout_ns = us(o["default_timeout_microseconds"]);
  if (o.contains("additive_increase")) c.aimd_increase = o["additive_increase"].cast<int>();
  if (o.contains("multiplicative_decrease")) c.aimd_decrease = o["multiplicative_decrease"].cast<double>();
  if (o.contains("min_margin_us")) c.min_margin_ns = us(o["min_margin_us"]);
  if (o.contains("margin_quantile")) c.margin_quantile = o["margin_quantile"].cast<double>();
  if (o.contains("margin_window")) c.margin_window = o["margin_window"].cast<int>();
  if (o.contains("wait_for_batch")) c.wait_for_batch = o["wait_for_batch"].cast<bool>();
  if (o.contains("queue_admission")) c.queue_admission = o["queue_admission"].cast<bool>();
  if (o.contains("fair_share")) c.fair_share = o["fair_share"].cast<bool>();
  return c;
}

PredictorConfig predictor_config_from(const py::dict& o) {
  PredictorConfig c;
  c.kind = o["kind"].cast<std::string>();
  if (o.contains("alpha")) c.alpha = o["alpha"].cast<double>();
  if (o.contains("forgetting")) c.forgetting = o["forgetting"].cast<double>();
  if (o.contains("delta")) c.delta = o["delta"].cast<double>();
  if (o.contains("lr")) c.lr = o["lr"].cast<double>();
  if (o.contains("weights") && !o["weights"].is_none()) c.weights = o["weights"].cast<std::vector<double>>();
  if (o.contains("record")) c.record = o["record"].cast<bool>();
  if (o.contains("warmup_batches")) c.warmup_batches = o["warmup_batches"].cast<int>();
  return c;
}

py::dict prediction_columns(const std::vector<PredictionRecord>& rs) {
  const auto n = static_cast<py::ssize_t>(rs.size());
  constexpr py::ssize_t k = CoLocation::kFeatures;
  py::array_t<std::int32_t> model(n), lane(n), size(n);
  py::array_t<double> start(n), end(n), solo(n), predicted(n), actual(n);
  py::array_t<double> fine({n, k}), coarse({n, k});
  for (py::ssize_t i = 0; i < n; ++i) {
    const PredictionRecord& r = rs[i];
    model.mutable_at(i) = r.model;
    lane.mutable_at(i) = r.lane;
    size.mutable_at(i) = r.size;
    start.mutable_at(i) = r.start / 1e9;
    end.mutable_at(i) = r.end / 1e9;
    solo.mutable_at(i) = r.solo_ns / 1e6;
    predicted.mutable_at(i) = r.predicted_ns / 1e6;
    actual.mutable_at(i) = (r.end - r.start) / 1e6;
    for (py::ssize_t j = 0; j < k; ++j) {
      fine.mutable_at(i, j) = r.fine[j];
      coarse.mutable_at(i, j) = r.coarse[j];
    }
  }
  py::dict d;
  d["model_index"] = model;
  d["lane"] = lane;
  d["batch_size"] = size;
  d["start_s"] = start;
  d["end_s"] = end;
  d["solo_ms"] = solo;
  d["predicted_ms"] = predicted;
  d["actual_ms"] = actual;
  d["fine"] = fine;
  d["coarse"] = coarse;
  return d;
}

py::dict trace_columns(const std::vector<TraceRecord>& rs) {
  const auto n = static_cast<py::ssize_t>(rs.size());
  py::array_t<std::int64_t> id(n), arrival(n), start(n), end(n), deadline(n), batch(n);
  py::array_t<std::int32_t> model(n), lane(n), size(n);
  py::list outcome;
  for (py::ssize_t i = 0; i < n; ++i) {
    const TraceRecord& r = rs[i];
    id.mutable_at(i) = static_cast<std::int64_t>(r.request);
    model.mutable_at(i) = r.model;
    arrival.mutable_at(i) = r.arrival;
    start.mutable_at(i) = r.start;
    end.mutable_at(i) = r.end;
    deadline.mutable_at(i) = r.deadline;
    batch.mutable_at(i) = r.batch;
    lane.mutable_at(i) = r.lane;
    size.mutable_at(i) = r.batch_size;
    outcome.append(trace_outcome_name(r.outcome));
  }
  py::dict d;
  d["request_id"] = id;
  d["model_index"] = model;
  d["arrival_ns"] = arrival;
  d["start_ns"] = start;
  d["end_ns"] = end;
  d["deadline_ns"] = deadline;
  d["batch_id"] = batch;
  d["lane"] = lane;
  d["batch_size"] = size;
  d["outcome"] = outcome;
  return d;
}

}  // namespace gpulanes::bindings
