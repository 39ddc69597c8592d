#include "gpulanes/sim/simulator.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <optional>

#include "gpulanes/core/error.h"

namespace gpulanes {

Simulator::Simulator(SimulatorOptions options, std::vector<SimModelSpec> models)
    : clock_(std::make_shared<VirtualClock>(kOrigin)), models_(models), replan_(options.replan) {
  SimClusterConfig cc;
  cc.gpus = options.gpus;
  cc.lanes = options.lanes;
  cc.interference = options.interference;
  cc.noise_cv = options.noise_cv;
  cc.seed = options.seed;
  for (const auto& m : models) cc.models.push_back(m.profile);
  cluster_ = std::make_shared<SimCluster>(std::move(cc));

  RuntimeOptions ro;
  ro.device = "virtual";
  ro.policy = options.policy;
  ro.policy_config = options.policy_config;
  ro.trace = options.trace;
  ro.predictor = options.predictor;
  ro.virtual_backend = cluster_;
  ro.on_finished = [this](const Request& r, TraceOutcome o, TimeNs end) { on_finished(r, o, end); };
  runtime_ = std::make_unique<Runtime>(std::move(ro), clock_);
  recorders_.resize(models.size());
  for (std::size_t m = 0; m < models.size(); ++m) {
    ModelSpec spec;
    spec.name = models[m].name;
    spec.slo = models[m].slo;
    spec.max_batch_size = models[m].max_batch_size;
    spec.max_queue = models[m].max_queue;
    runtime_->register_virtual_model(std::move(spec));
    // The scheduler's own profile of each model is its solo profile on a whole GPU; lanes with
    // a smaller share get theirs from the cluster.
    std::vector<LatencyPoint> points = models[m].profile.profile_at(1.0).points();
    runtime_->set_profile(models[m].name, points);
  }
  runtime_->start();
}

Simulator::~Simulator() {
  if (runtime_) runtime_->shutdown(false);
}

void Simulator::on_finished(const Request& r, TraceOutcome outcome, TimeNs end) {
  if (r.arrival < warmup_end_) return;
  Recorder& rec = recorders_[r.model];
  rec.counts.requests++;
  switch (outcome) {
    case TraceOutcome::kMet:
    case TraceOutcome::kMissed:
      (outcome == TraceOutcome::kMet ? rec.counts.met : rec.counts.late)++;
      rec.latency_ms.push_back(static_cast<float>((end - r.arrival) / 1e6));
      break;
    case TraceOutcome::kDropped: rec.counts.dropped++; break;
    default: rec.counts.failed++; break;
  }
}

std::vector<SimLaneSpec> Simulator::replan(const std::vector<double>& rates,
                                           ReplanEvent* event) const {
  std::vector<PlannerModel> pm;
  for (std::size_t m = 0; m < models_.size(); ++m) {
    pm.push_back({models_[m].name, std::max(rates[m], replan_.min_rate), models_[m].slo,
                  models_[m].max_batch_size, &models_[m].profile});
  }
  const auto t0 = std::chrono::steady_clock::now();
  const Plan plan = make_plan(pm, replan_.planner);
  event->plan_wall_us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
  event->gpus_used = plan.gpus_used;
  event->feasible = plan.feasible;
  event->lanes = static_cast<int>(plan.lanes.size());
  std::vector<SimLaneSpec> layout;
  for (const PlannedLane& l : plan.lanes) {
    SimLaneSpec s{l.gpu, l.sms, {}};
    for (const PlannedModel& p : l.models) s.models.push_back(p.model);
    layout.push_back(std::move(s));
  }
  return layout;
}

SimRunResult Simulator::run(const double* t_s, const std::int32_t* model, std::size_t n,
                            double warmup_s, const std::vector<DurationNs>& deadline_ns) {
  if (ran_) throw Error(ErrorCode::kInvalidInput, "a Simulator runs once; make a new one");
  ran_ = true;
  const int n_models = static_cast<int>(recorders_.size());
  warmup_end_ = kOrigin + static_cast<DurationNs>(std::llround(warmup_s * 1e9));
  auto arrival_ns = [&](std::size_t i) {
    return kOrigin + static_cast<DurationNs>(std::llround(t_s[i] * 1e9));
  };
  for (std::size_t i = 1; i < n; ++i) {
    if (t_s[i] < t_s[i - 1]) throw Error(ErrorCode::kInvalidInput, "arrivals must be sorted by time");
  }
  for (std::size_t i = 0; i < n; ++i) {
    if (model[i] < 0 || model[i] >= n_models) {
      throw Error(ErrorCode::kInvalidInput, "arrival " + std::to_string(i) + " names no model");
    }
  }
  SimRunResult result;
  result.arrivals = n;
  std::size_t i = 0;
  TimeNs last_outcome = kOrigin;
  const DurationNs every = static_cast<DurationNs>(replan_.every_s * 1e9);
  TimeNs next_replan = every > 0 ? kOrigin + every : kNever;
  const DurationNs check = replan_.drift > 0 ? static_cast<DurationNs>(replan_.check_s * 1e9) : 0;
  TimeNs next_check = check > 0 ? kOrigin + check : kNever;
  TimeNs window_start = kOrigin;
  std::vector<double> window(n_models, 0.0), rate(n_models, -1.0);  // arrivals, EWMA rate
  for (int m = 0; m < n_models && m < static_cast<int>(replan_.initial_rates.size()); ++m) {
    rate[m] = replan_.initial_rates[m];
  }
  std::optional<std::vector<SimLaneSpec>> pending;  // a layout waiting for lanes to go idle
  auto seconds = [](TimeNs t) { return (t - kOrigin) / 1e9; };
  while (true) {
    TimeNs next = std::max(runtime_->run_round(), clock_->now() + 1);
    next = std::min(next, cluster_->next_end());
    if (i < n) next = std::min({next, arrival_ns(i), next_replan, next_check});
    if (next == kNever) break;
    if (next > clock_->now()) clock_->advance_to(next);
    ++result.steps;
    cluster_->finish_due();
    const TimeNs now = clock_->now();
    bool drifted = false;
    if (now >= next_check) {
      // Early re-plan when a planned model's rate since the last plan moved by more than
      // `drift` (relative), on at least 10 arrivals of evidence.
      const double span = (now - window_start) / 1e9;
      for (int m = 0; m < n_models && rate[m] >= 0; ++m) {
        const double planned = std::max(rate[m], replan_.min_rate);
        drifted = drifted || (window[m] >= 10 &&
                              std::abs(window[m] / span - planned) > replan_.drift * planned);
      }
      next_check = now + check;
    }
    if (now >= next_replan || drifted) {
      const double span = (now - window_start) / 1e9;
      for (int m = 0; m < n_models; ++m) {
        const double r = window[m] / span;
        rate[m] = rate[m] < 0 ? r : replan_.alpha * r + (1 - replan_.alpha) * rate[m];
        window[m] = 0;
      }
      window_start = now;
      ReplanEvent event;
      event.t_s = seconds(now);
      event.drift = drifted && now < next_replan;
      std::vector<SimLaneSpec> layout = replan(rate, &event);
      const auto& current = cluster_->layout();
      event.changed = layout.size() != current.size() ||
                      !std::equal(layout.begin(), layout.end(), current.begin(),
                                  [](const SimLaneSpec& a, const SimLaneSpec& b) {
                                    return a.gpu == b.gpu && a.sms == b.sms && a.models == b.models;
                                  });
      if (event.changed) {
        pending = std::move(layout);
        runtime_->pause_dispatch();
      }
      result.replans.push_back(event);
      next_replan = now + every;
    }
    if (pending && runtime_->lanes_idle()) {
      cluster_->set_layout(std::move(*pending));
      runtime_->take_virtual_lanes();
      pending.reset();
      result.replans.back().applied_t_s = seconds(now);
    }
    for (; i < n && arrival_ns(i) <= now; ++i) {
      const int m = model[i];
      window[m] += 1;
      const DurationNs rel = m < static_cast<int>(deadline_ns.size()) ? deadline_ns[m] : 0;
      const ErrorCode code = runtime_->try_submit(
          m, {}, rel > 0 ? std::optional<TimeNs>(now + rel) : std::nullopt, 0, nullptr,
          /*native=*/true);
      if (code != ErrorCode::kOk && now >= warmup_end_) {
        recorders_[m].counts.requests++;
        recorders_[m].counts.rejected++;
      }
    }
    last_outcome = now;
  }
  result.simulated_s = (last_outcome - kOrigin) / 1e9;
  for (Recorder& rec : recorders_) {
    SimModelResult r = rec.counts;
    auto& v = rec.latency_ms;
    if (!v.empty()) {
      r.mean_ms = std::accumulate(v.begin(), v.end(), 0.0) / v.size();
      auto at = [&](double q) {
        const auto k = std::min(v.size() - 1, static_cast<std::size_t>(std::ceil(q * v.size())) - 1);
        std::nth_element(v.begin(), v.begin() + k, v.end());
        return static_cast<double>(v[k]);
      };
      r.p50_ms = at(0.50);
      r.p99_ms = at(0.99);
    }
    result.models.push_back(r);
  }
  return result;
}

}  // namespace gpulanes
