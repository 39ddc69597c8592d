#include "gpulanes/sim/simulator.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <optional>

#include "gpulanes/core/error.h"

namespace gpulanes {

Simulator::Simulator(SimulatorOptions options, std::vector<SimModelSpec> models)
    : clock_(std::make_shared<VirtualClock>(kOrigin)),
      models_(models),
      replan_(options.replan),
      interference_(options.interference) {
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

std::vector<SimLaneSpec> Simulator::replan(const std::vector<double>& rates, ReplanEvent* event) {
  std::vector<PlannerModel> pm;
  const std::vector<TrafficShape> seen = runtime_->traffic();
  for (std::size_t m = 0; m < models_.size(); ++m) {
    pm.push_back({models_[m].name, rates[m], models_[m].slo, models_[m].max_batch_size,
                  &models_[m].profile, seen[m].dispersion,
                  seen[m].dispersion >= 0 ? seen[m].peak_rate : 0.0});
    event->dispersion.push_back(seen[m].dispersion);
  }
  const auto t0 = std::chrono::steady_clock::now();
  Plan plan;
  if (replan_.planner.variant == "self_tuning") {
    Plan current;
    for (const SimLaneSpec& l : cluster_->layout()) {
      PlannedLane lane;
      lane.gpu = l.gpu;
      lane.sms = l.sms;
      for (int m : l.models) lane.models.push_back({m, models_[m].max_batch_size, 0, 0});
      current.lanes.push_back(std::move(lane));
    }
    current.unplaced_rate.assign(models_.size(), 0.0);
    const auto fb = feedback_.measure(clock_->now(), runtime_->lane_stats(), runtime_->stats(),
                                      current);
    plan = self_tuning_step(current, fb, pm, replan_.planner);
  } else {
    // Sized for the measured bursts and proven in a simulation of its own first, as the real
    // runtime's planner thread does (runtime/planning.cpp).
    PlanCheckOptions check;
    check.interference = interference_;
    CheckedPlan c = make_checked_plan(pm, replan_.planner, check);
    plan = std::move(c.plan);
    event->gpus_needed = c.gpus_needed;
    event->simulated_attainment = c.check.ran ? c.check.min_attainment : -1;
    event->why = std::move(c.why);
  }
  event->plan_wall_us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
  event->gpus_used = plan.gpus_used;
  event->feasible = plan.feasible;
  event->lanes = static_cast<int>(plan.lanes.size());
  runtime_->set_admission_limits(replan_.admission
                                     ? admission_limits(plan, rates, replan_.admit_fraction)
                                     : std::vector<double>{});
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
  Replanner replanner(replan_, n_models, kOrigin);
  feedback_.reset(clock_->now(), runtime_->lane_stats(), runtime_->stats());
  std::optional<std::vector<SimLaneSpec>> pending;  // a layout waiting for lanes to go idle
  auto seconds = [](TimeNs t) { return (t - kOrigin) / 1e9; };
  while (true) {
    TimeNs next = std::max(runtime_->run_round(), clock_->now() + 1);
    next = std::min(next, cluster_->next_end());
    if (i < n) next = std::min({next, arrival_ns(i), replanner.next_tick()});
    if (next == kNever) break;
    if (next > clock_->now()) clock_->advance_to(next);
    ++result.steps;
    cluster_->finish_due();
    const TimeNs now = clock_->now();
    ReplanEvent event;
    if (replanner.due(now, &event)) {
      std::vector<SimLaneSpec> layout = replan(event.rates, &event);
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
      result.replans.push_back(std::move(event));
    }
    if (pending && runtime_->lanes_idle()) {
      cluster_->set_layout(std::move(*pending));
      runtime_->take_virtual_lanes();
      pending.reset();
      feedback_.reset(clock_->now(), runtime_->lane_stats(), runtime_->stats());  // new lanes
      result.replans.back().applied_t_s = seconds(now);
    }
    for (; i < n && arrival_ns(i) <= now; ++i) {
      const int m = model[i];
      replanner.on_arrival(m);
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
