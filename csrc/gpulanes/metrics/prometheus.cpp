#include "gpulanes/metrics/prometheus.h"

#include <cstdio>
#include <sstream>

namespace gpulanes {
namespace {

std::string escape(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

std::string num(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

void header(std::ostringstream& os, const char* name, const char* type, const char* help) {
  os << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n';
}

void summary(std::ostringstream& os, const char* name, const std::string& model,
             const LogHistogram& h) {
  for (double q : {0.5, 0.9, 0.99, 0.999}) {
    os << name << "{model=\"" << model << "\",quantile=\"" << num(q) << "\"} "
       << num(h.percentile(q) / 1e9) << '\n';
  }
  os << name << "_sum{model=\"" << model << "\"} " << num(h.mean() * h.count() / 1e9) << '\n';
  os << name << "_count{model=\"" << model << "\"} " << h.count() << '\n';
}

}  // namespace

std::string prometheus_text(const std::vector<ModelStats>& stats,
                            const std::vector<LaneStats>& lanes) {
  std::ostringstream os;
  header(os, "gpulanes_requests_total", "counter",
         "Requests by model and final outcome (met, missed: finished late, dropped: failed "
         "without running, rejected: refused at submit, failed).");
  for (const auto& s : stats) {
    const std::string m = escape(s.name);
    const std::pair<const char*, std::uint64_t> outcomes[] = {
        {"met", s.met}, {"missed", s.missed}, {"dropped", s.dropped},
        {"rejected", s.rejected}, {"failed", s.failed}};
    for (const auto& [outcome, n] : outcomes) {
      os << "gpulanes_requests_total{model=\"" << m << "\",outcome=\"" << outcome << "\"} " << n
         << '\n';
    }
  }
  header(os, "gpulanes_requests_submitted_total", "counter", "submit() calls by model.");
  for (const auto& s : stats) {
    os << "gpulanes_requests_submitted_total{model=\"" << escape(s.name) << "\"} " << s.submitted
       << '\n';
  }
  header(os, "gpulanes_batch_reruns_total", "counter",
         "Runs of parts of failed batches, to find the requests that made them fail.");
  for (const auto& s : stats) {
    os << "gpulanes_batch_reruns_total{model=\"" << escape(s.name) << "\"} " << s.reruns << '\n';
  }
  header(os, "gpulanes_requests_in_flight", "gauge", "Accepted requests not finished yet.");
  for (const auto& s : stats) {
    os << "gpulanes_requests_in_flight{model=\"" << escape(s.name) << "\"} " << s.in_flight << '\n';
  }
  header(os, "gpulanes_goodput", "gauge",
         "Requests per second that met their deadline, since the runtime started.");
  for (const auto& s : stats) {
    os << "gpulanes_goodput{model=\"" << escape(s.name) << "\"} " << num(s.goodput) << '\n';
  }
  const std::pair<const char*, const char*> summaries[] = {
      {"gpulanes_request_latency_seconds", "Arrival to result, completed requests."},
      {"gpulanes_request_queue_seconds", "Arrival to batch start, requests that ran."},
      {"gpulanes_batch_exec_seconds", "Forward time per batch on its lane."}};
  for (int i = 0; i < 3; ++i) {
    header(os, summaries[i].first, "summary", summaries[i].second);
    for (const auto& s : stats) {
      const LogHistogram& h = i == 0 ? s.latency_ns : i == 1 ? s.queue_ns : s.exec_ns;
      summary(os, summaries[i].first, escape(s.name), h);
    }
  }
  header(os, "gpulanes_batch_size", "histogram", "Requests per batch.");
  for (const auto& s : stats) {
    const std::string m = escape(s.name);
    std::uint64_t cumulative = 0, total = 0;
    for (const auto& [size, count] : s.batch_sizes) {
      cumulative += count;
      total += static_cast<std::uint64_t>(size) * count;
      os << "gpulanes_batch_size_bucket{model=\"" << m << "\",le=\"" << size << "\"} " << cumulative
         << '\n';
    }
    os << "gpulanes_batch_size_bucket{model=\"" << m << "\",le=\"+Inf\"} " << cumulative << '\n';
    os << "gpulanes_batch_size_sum{model=\"" << m << "\"} " << total << '\n';
    os << "gpulanes_batch_size_count{model=\"" << m << "\"} " << cumulative << '\n';
  }
  const std::pair<const char*, const char*> prediction[] = {
      {"gpulanes_batch_latency_prediction_mape",
       "Mean absolute relative error of the batch latency prediction, recent batches."},
      {"gpulanes_batch_latency_prediction_bias",
       "Mean signed relative error (measured - predicted) / measured, recent batches."},
      {"gpulanes_batch_latency_prediction_p99_abs_seconds",
       "99th percentile of |measured - predicted| batch latency, recent batches."}};
  for (int i = 0; i < 3; ++i) {
    header(os, prediction[i].first, "gauge", prediction[i].second);
    for (const auto& s : stats) {
      const PredictionErrorStats& p = s.prediction;
      const double v = i == 0 ? p.mape : i == 1 ? p.bias : p.p99_abs_ms / 1e3;
      os << prediction[i].first << "{model=\"" << escape(s.name) << "\"} " << num(v) << '\n';
    }
  }
  if (lanes.empty()) return os.str();
  auto lane_labels = [](const LaneStats& l) {
    return "lane=\"" + std::to_string(l.index) + "\",kind=\"" + escape(l.kind) + "\",device=\"" +
           escape(l.device) + "\"";
  };
  header(os, "gpulanes_lane_batches_total", "counter", "Batches run, by lane.");
  for (const auto& l : lanes) {
    os << "gpulanes_lane_batches_total{" << lane_labels(l) << "} " << l.batches << '\n';
  }
  header(os, "gpulanes_lane_requests_total", "counter",
         "Requests run, by lane and outcome (met, missed: finished late, failed: the batch raised).");
  for (const auto& l : lanes) {
    const std::pair<const char*, std::uint64_t> outcomes[] = {
        {"met", l.met}, {"missed", l.missed}, {"failed", l.failed}};
    for (const auto& [outcome, n] : outcomes) {
      os << "gpulanes_lane_requests_total{" << lane_labels(l) << ",outcome=\"" << outcome << "\"} "
         << n << '\n';
    }
  }
  header(os, "gpulanes_lane_busy_seconds_total", "counter", "Time the lane spent running batches.");
  for (const auto& l : lanes) {
    os << "gpulanes_lane_busy_seconds_total{" << lane_labels(l) << "} " << num(l.busy_s) << '\n';
  }
  header(os, "gpulanes_lane_busy_fraction", "gauge",
         "Busy seconds over seconds since the runtime started.");
  for (const auto& l : lanes) {
    os << "gpulanes_lane_busy_fraction{" << lane_labels(l) << "} " << num(l.busy_fraction) << '\n';
  }
  return os.str();
}

}  // namespace gpulanes
