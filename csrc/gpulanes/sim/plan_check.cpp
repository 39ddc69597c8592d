#include "gpulanes/sim/plan_check.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <sstream>

#include "gpulanes/core/error.h"
#include "gpulanes/plan/arrival_shape.h"
#include "gpulanes/sim/simulator.h"

namespace gpulanes {

namespace {

// Merged arrivals of every model over `seconds`: (time s, model), sorted.
std::vector<std::pair<double, int>> arrivals(const std::vector<PlannerModel>& models,
                                             double assumed_dispersion, double seconds,
                                             std::uint64_t seed) {
  std::vector<std::pair<double, int>> out;
  std::mt19937_64 rng(seed);
  for (std::size_t m = 0; m < models.size(); ++m) {
    const double rate = models[m].rate;
    if (rate <= 0) continue;
    const double d = models[m].dispersion < 0 ? assumed_dispersion : models[m].dispersion;
    // Gamma gaps of mean 1/rate and CV sqrt(d): shape 1/d, scale d/rate.
    std::gamma_distribution<double> gap(d > 0 ? 1.0 / d : 1.0, d > 0 ? d / rate : 1.0 / rate);
    double t = d > 0 ? gap(rng) : 0.5 / rate;
    while (t < seconds) {
      out.emplace_back(t, static_cast<int>(m));
      t += d > 0 ? gap(rng) : 1.0 / rate;
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

PlanCheck simulate_plan(const Plan& plan, const std::vector<PlannerModel>& models,
                        const PlannerConfig& config, const PlanCheckOptions& options) {
  PlanCheck check;
  check.attainment.assign(models.size(), 1.0);
  if (plan.lanes.empty()) return check;
  SimulatorOptions o;
  o.gpus.assign(std::max(1, plan.gpus_used), SimGpuSpec{config.sms_per_gpu, config.memory_gb});
  for (const PlannedLane& l : plan.lanes) {
    SimLaneSpec s{l.gpu, l.sms, {}};
    for (const PlannedModel& pm : l.models) s.models.push_back(pm.model);
    o.lanes.push_back(std::move(s));
  }
  o.interference = options.interference ? options.interference
                                        : make_linear_interference(config.interference);
  o.seed = options.seed;
  std::vector<SimModelSpec> specs;
  for (const PlannerModel& m : models) {
    if (!m.profile) throw Error(ErrorCode::kInvalidInput, "model '" + m.name + "' has no profile");
    SimModelSpec s;
    s.name = m.name;
    s.slo = m.slo;
    s.max_batch_size = m.max_batch_size;
    s.profile = *m.profile;
    specs.push_back(std::move(s));
  }
  // The traffic the plan admits: what it could not place is shed at submit (admission), and a
  // simulation of it would only measure the shedding. Arrivals are capped at 400,000.
  std::vector<PlannerModel> admitted = models;
  double total = 0;
  for (std::size_t m = 0; m < admitted.size(); ++m) {
    PlannerModel& a = admitted[m];
    const double unplaced = m < plan.unplaced_rate.size() ? plan.unplaced_rate[m] : 0.0;
    if (unplaced > 0) {
      a.rate = std::max(0.0, a.rate - unplaced);
    } else if (a.peak_rate > 0) {
      // A measured peak beyond what the dispersion explains (a slow burst): the plan must hold
      // the mean rate whose bursts reach it, for as long as the simulation runs.
      const double d = a.dispersion < 0 ? config.assumed_dispersion : a.dispersion;
      a.rate = std::max(a.rate, mean_for_burst(a.peak_rate, d, a.slo));
    }
    total += a.rate;
  }
  const double seconds = total > 0 ? std::min(options.seconds, 4e5 / total) : options.seconds;
  const auto arr = arrivals(admitted, config.assumed_dispersion, seconds, options.seed);
  std::vector<double> t;
  std::vector<std::int32_t> which;
  t.reserve(arr.size());
  which.reserve(arr.size());
  for (const auto& [at, m] : arr) {
    t.push_back(at);
    which.push_back(m);
  }
  Simulator sim(std::move(o), std::move(specs));
  const SimRunResult r = sim.run(t.data(), which.data(), t.size(), seconds / 4, {});
  check.ran = true;
  check.min_attainment = 1.0;
  for (std::size_t m = 0; m < models.size(); ++m) {
    const SimModelResult& c = r.models[m];
    if (c.requests > 0) check.attainment[m] = static_cast<double>(c.met) / c.requests;
    check.min_attainment = std::min(check.min_attainment, check.attainment[m]);
  }
  check.passed = check.min_attainment >= options.target;
  return check;
}

CheckedPlan make_checked_plan(const std::vector<PlannerModel>& models, const PlannerConfig& config,
                              const PlanCheckOptions& options) {
  CheckedPlan out;
  auto pct = [](double x) {
    std::ostringstream s;
    s.precision(3);
    s << 100 * x << "%";
    return s.str();
  };
  // Consolidation: the fewest GPUs whose unspread plan holds the target.
  PlannerConfig tight = config;
  tight.spread = false;
  const int first = std::max(1, make_plan(models, tight).gpus_needed);
  for (int g = first; g <= config.gpus; ++g) {
    tight.gpus = g;
    const Plan p = make_plan(models, tight);
    if (!p.feasible) continue;
    if (simulate_plan(p, models, config, options).passed) {
      out.gpus_needed = g;
      break;
    }
  }
  // What to apply: the variant's plan over the budget, else temporal sharing.
  out.plan = make_plan(models, config);
  out.check = simulate_plan(out.plan, models, config, options);
  if (out.check.passed || !out.check.ran || config.variant == "self_tuning") {
    out.plan.gpus_needed = out.gpus_needed > 0 ? out.gpus_needed : out.plan.gpus_needed;
    return out;
  }
  std::string why = config.variant + " plan held " + pct(out.check.min_attainment) +
                    " in simulation (target " + pct(options.target) + ")";
  if (config.variant != "temporal_only") {
    PlannerConfig whole = config;
    whole.variant = "temporal_only";
    Plan alt = make_plan(models, whole);
    const PlanCheck alt_check = simulate_plan(alt, models, config, options);
    if (alt_check.min_attainment > out.check.min_attainment &&
        (alt.feasible || !out.plan.feasible)) {
      why += "; temporal_only on whole GPUs held " + pct(alt_check.min_attainment) +
             (alt_check.passed ? ": applied instead" : ", better: applied instead");
      out.plan = std::move(alt);
      out.check = alt_check;
    } else {
      why += "; temporal_only held " + pct(alt_check.min_attainment) + ", no better";
    }
  }
  if (!out.check.passed) why += "; no plan within " + std::to_string(config.gpus) + " GPU(s) holds it";
  out.why = why;
  out.plan.gpus_needed = out.gpus_needed > 0 ? out.gpus_needed : out.plan.gpus_needed;
  return out;
}

}  // namespace gpulanes
