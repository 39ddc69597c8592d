#include "gpulanes/plan/planner.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>

#include "gpulanes/core/check.h"
#include "gpulanes/core/error.h"
#include "gpulanes/plan/arrival_shape.h"
#include "gpulanes/plan/self_tuning.h"

namespace gpulanes {
namespace {

class Planner {
 public:
  Planner(const std::vector<PlannerModel>& models, const PlannerConfig& cfg)
      : models_(models), cfg_(cfg), interference_(cfg.variant == "spatiotemporal") {
    if (cfg.variant != "spatiotemporal" && cfg.variant != "no_interference" &&
        cfg.variant != "temporal_only") {
      throw Error(ErrorCode::kInvalidInput,
                  "unknown planner '" + cfg.variant +
                      "' (spatiotemporal, no_interference, temporal_only, self_tuning)");
    }
    if (cfg.interference.size() != 5) {
      throw Error(ErrorCode::kInvalidInput, "planner interference needs 5 coefficients");
    }
    for (const auto& m : models) {
      if (!m.profile) throw Error(ErrorCode::kInvalidInput, "model '" + m.name + "' has no profile");
    }
    if (cfg.variant == "temporal_only") {
      sizes_ = {cfg.sms_per_gpu};
    } else {
      for (int s = cfg.granularity; s < cfg.sms_per_gpu && lane_fits(cfg, 0, s); s += cfg.granularity) {
        sizes_.push_back(s);
      }
      sizes_.push_back(cfg.sms_per_gpu);
    }
  }

  Plan run() {
    plan_.variant = cfg_.variant;
    plan_.unplaced_rate.assign(models_.size(), 0.0);
    std::vector<int> order(models_.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
      return models_[a].rate * models_[a].slo < models_[b].rate * models_[b].slo;
    });
    for (int m : order) place_model(m);
    plan_.feasible = std::all_of(plan_.unplaced_rate.begin(), plan_.unplaced_rate.end(),
                                 [](double r) { return r <= 1e-9; });
    return plan_;
  }

  // Checks every lane of `gpu` at its co-runners' interference; updates their latencies. Lane
  // `flexible` (the one being placed) may take less than its planned rate if interference
  // slows it down; every other lane must keep its rate.
  bool gpu_ok(std::vector<PlannedLane>& lanes, int gpu, std::size_t flexible = -1) const {
    for (std::size_t i = 0; i < lanes.size(); ++i) {
      if (lanes[i].gpu != gpu) continue;
      double f = 1.0;
      if (interference_) {
        for (std::size_t j = 0; j < lanes.size(); ++j) {
          if (j != i && lanes[j].gpu == gpu) f = std::max(f, factor(lanes[i], lanes[j]));
        }
      }
      if (!lane_ok(lanes[i], f, i == flexible)) return false;
    }
    return true;
  }

 private:
  double share(int sms) const { return static_cast<double>(sms) / cfg_.sms_per_gpu; }
  DurationNs latency(int m, int b, int sms) const {
    return static_cast<DurationNs>(models_[m].profile->solo_ns(b, share(sms)) * cfg_.safety);
  }
  // Largest batch with 2 L f <= SLO on `sms` SMs (0: none) and its throughput at slow-down f.
  std::pair<int, double> saturated(int m, int sms, double f = 1.0) const {
    for (int b = models_[m].max_batch_size; b >= 1; --b) {
      const double l = latency(m, b, sms) * f;
      if (2 * l <= models_[m].slo) return {b, b / (l / 1e9)};
    }
    return {0, 0.0};
  }
  // The slow-down a lane of `m` on `sms` SMs at batch `b` would see beside a copy of itself: the
  // headroom saturated lanes are planned with when placement checks interference, so that a
  // neighbour like them does not push them past their SLO or rate.
  double self_factor(int m, int sms, int b) const {
    if (!interference_) return 1.0;
    PlannedLane lane;
    lane.sms = sms;
    lane.models.push_back({m, b, 0, 0});
    return factor(lane, lane);
  }
  int ideal_size(int m) const {
    std::vector<double> t;
    for (int s : sizes_) t.push_back(saturated(m, s).second);
    int best = -1;
    double steepest = -1;
    for (std::size_t k = 0; k + 1 < sizes_.size(); ++k) {
      if (t[k] <= 0 || t[k + 1] < 1.05 * t[k]) continue;
      const double slope = (t[k + 1] - t[k]) / (sizes_[k + 1] - sizes_[k]);
      if (slope > steepest) {
        steepest = slope;
        best = sizes_[k + 1];
      }
    }
    if (best > 0) return best;
    for (std::size_t k = 0; k < sizes_.size(); ++k) {
      if (t[k] > 0) return sizes_[k];  // more SMs do not help: the smallest that works
    }
    return -1;
  }
  // Resource use of the lane's heaviest model at its batch.
  std::pair<double, double> intensity(const PlannedLane& lane) const {
    double l2 = 0, dram = 0;
    for (const auto& pm : lane.models) {
      l2 = std::max(l2, models_[pm.model].profile->l2(pm.batch, share(lane.sms)));
      dram = std::max(dram, models_[pm.model].profile->dram(pm.batch, share(lane.sms)));
    }
    return {l2, dram};
  }
  double factor(const PlannedLane& self, const PlannedLane& other) const {
    const auto [l2s, drs] = intensity(self);
    const auto [l2o, dro] = intensity(other);
    const auto& c = cfg_.interference;
    return std::max(1.0, c[0] * l2s + c[1] * l2o + c[2] * drs + c[3] * dro + c[4]);
  }
  // A request of a lane running batches of `b` at `rate` waits for its batch to fill (the b - 1
  // after it; gpu-let's rule counts b) or for the batch ahead, whichever is longer, then runs.
  bool serves_in_time(int m, int b, double latency_ns, double rate) const {
    const double wait_ns = std::max((b - 1) / rate * 1e9, latency_ns);
    return latency_ns + wait_ns <= models_[m].slo;
  }
  // Whether the lane meets every SLO at slow-down `f`; sets batches, latencies and duty cycle.
  // With `may_shrink`, a one-model lane that misses at `f` may take a smaller batch and serve
  // what that batch can (at least half its planned rate).
  bool lane_ok(PlannedLane& lane, double f, bool may_shrink = false) const {
    auto lat = [&](const PlannedModel& pm, int b) {
      return static_cast<DurationNs>(latency(pm.model, b, lane.sms) * f);
    };
    if (lane.models.size() == 1) {
      PlannedModel& pm = lane.models[0];
      // A lane being placed may trade batch size (and rate) for slack against interference.
      for (int b = pm.batch; b >= (may_shrink ? 1 : pm.batch); --b) {
        const DurationNs l = lat(pm, b);
        const double rate = std::min(pm.rate, b / (l / 1e9));
        if (rate < pm.rate * (1 - 1e-9) && (!may_shrink || rate < 0.5 * pm.rate)) continue;
        if (!serves_in_time(pm.model, b, l, rate)) continue;
        pm.batch = b;
        pm.rate = rate;
        pm.latency_ns = l;
        lane.duty_ns = static_cast<DurationNs>(std::max<double>(b / rate * 1e9, l));
        return true;
      }
      return false;
    }
    // Temporal sharing: a cycle D serves ceil(rate x D) requests of each model; the batches must
    // fit in the cycle, and a request may wait one cycle and then run.
    DurationNs min_slo = kNever;
    for (const auto& pm : lane.models) min_slo = std::min(min_slo, models_[pm.model].slo);
    for (double frac = 0.5; frac >= 0.05; frac -= 0.05) {
      const double d = frac * min_slo;
      DurationNs sum = 0;
      bool fits = true;
      std::vector<int> batches;
      for (const auto& pm : lane.models) {
        const int b = static_cast<int>(std::ceil(pm.rate * d / 1e9 - 1e-9));
        if (b > models_[pm.model].max_batch_size) {
          fits = false;
          break;
        }
        batches.push_back(std::max(1, b));
        sum += lat(pm, batches.back());
      }
      if (!fits || sum > d || sum + d > min_slo) continue;
      for (std::size_t i = 0; i < lane.models.size(); ++i) {
        lane.models[i].batch = batches[i];
        lane.models[i].latency_ns = lat(lane.models[i], batches[i]);
      }
      lane.duty_ns = static_cast<DurationNs>(d);
      return true;
    }
    return false;
  }
  int used_sms(int gpu) const {
    int used = 0;
    for (const auto& l : plan_.lanes) used += l.gpu == gpu ? l.sms : 0;
    return used;
  }
  double memory_gb(int gpu) const {
    double mb = 0;
    for (const auto& l : plan_.lanes) {
      if (l.gpu != gpu) continue;
      for (const auto& pm : l.models) mb += models_[pm.model].profile->memory_mb();
    }
    return mb / 1024;
  }
  // Best fit among used GPUs (then a new one if `may_open`): commits and returns true.
  bool place(PlannedLane lane, bool may_open) {
    std::vector<int> gpus(plan_.gpus_used);
    std::iota(gpus.begin(), gpus.end(), 0);
    std::stable_sort(gpus.begin(), gpus.end(), [&](int a, int b) { return used_sms(a) > used_sms(b); });
    if (may_open && plan_.gpus_used < cfg_.gpus) gpus.push_back(plan_.gpus_used);
    double mem = 0;
    for (const auto& pm : lane.models) mem += models_[pm.model].profile->memory_mb() / 1024;
    for (int g : gpus) {
      if (!lane_fits(cfg_, used_sms(g), lane.sms) || memory_gb(g) + mem > cfg_.memory_gb) continue;
      std::vector<PlannedLane> trial = plan_.lanes;
      lane.gpu = g;
      trial.push_back(lane);
      if (!gpu_ok(trial, g, trial.size() - 1)) continue;
      placed_rate_ = trial.back().models[0].rate;
      plan_.lanes = std::move(trial);
      plan_.gpus_used = std::max(plan_.gpus_used, g + 1);
      return true;
    }
    return false;
  }
  // Adds model `m` at `rate` to an existing lane (temporal sharing), if its GPU still checks.
  bool share_lane(int m, double rate) {
    for (std::size_t i = 0; i < plan_.lanes.size(); ++i) {
      PlannedLane& l = plan_.lanes[i];
      if (static_cast<int>(l.models.size()) >= cfg_.max_models_per_lane) continue;
      if (memory_gb(l.gpu) + models_[m].profile->memory_mb() / 1024 > cfg_.memory_gb) continue;
      std::vector<PlannedLane> trial = plan_.lanes;
      trial[i].models.push_back({m, 1, rate, 0});
      if (!gpu_ok(trial, l.gpu)) continue;
      plan_.lanes = std::move(trial);
      return true;
    }
    return false;
  }
  void place_model(int m) {
    double left = models_[m].rate;
    if (left <= 0) return;
    const int ideal = ideal_size(m);
    if (ideal < 0) {
      plan_.unplaced_rate[m] = left;  // no lane size meets its SLO
      return;
    }
    const int solo_batch = saturated(m, ideal).first;
    const auto [sat_batch, cap] = saturated(m, ideal, self_factor(m, ideal, solo_batch));
    if (sat_batch == 0) {
      plan_.unplaced_rate[m] = left;
      return;
    }
    while (left > cap) {
      PlannedLane lane;
      lane.sms = ideal;
      lane.models.push_back({m, sat_batch, cap, 0});
      if (!place(lane, true)) break;
      left -= placed_rate_;  // less than cap when interference slows the lane down
    }
    if (left <= 1e-9) return;
    // The residue: the smallest lane that serves the rest alone, on a GPU in use; else shared
    // with a lane already there; else on a new GPU.
    auto residue = [&](bool may_open) {
      for (int s : sizes_) {
        for (int b = models_[m].max_batch_size; b >= 1; --b) {
          const DurationNs l = latency(m, b, s);
          if (b / (l / 1e9) < left || !serves_in_time(m, b, l, left)) continue;
          PlannedLane lane;
          lane.sms = s;
          lane.models.push_back({m, b, left, 0});
          if (place(lane, may_open)) {
            left -= placed_rate_;
            return left <= 1e-9;
          }
          break;  // a smaller batch on this size fits no better
        }
      }
      return false;
    };
    for (int attempt = 0; attempt < 4 && left > 1e-9; ++attempt) {
      if (residue(false) || share_lane(m, left) || residue(true)) return;
    }
    plan_.unplaced_rate[m] = left;
  }

  const std::vector<PlannerModel>& models_;
  const PlannerConfig& cfg_;
  const bool interference_;  // placement checks predicted interference
  std::vector<int> sizes_;   // candidate lane sizes, ascending
  Plan plan_;
  double placed_rate_ = 0;   // rate the lane placed last took
};

}  // namespace

namespace {

// GPU-seconds one request of `m` costs on a whole GPU at its largest batch within the SLO
// (2 L <= SLO): the unit in which overload is shared out. 0 if no batch fits.
double gpu_seconds_per_request(const PlannerModel& m, const PlannerConfig& cfg) {
  for (int b = m.max_batch_size; b >= 1; --b) {
    const double l = m.profile->solo_ns(b, 1.0) * cfg.safety;
    if (2 * l <= m.slo) return l / 1e9 / b;
  }
  return 0;
}

}  // namespace

void validate(const PlannerConfig& c) {
  if (c.variant != "spatiotemporal" && c.variant != "no_interference" &&
      c.variant != "temporal_only" && c.variant != "self_tuning") {
    throw Error(ErrorCode::kInvalidInput,
                "unknown planner '" + c.variant +
                    "' (spatiotemporal, no_interference, temporal_only, self_tuning)");
  }
  check_int("planner gpus", c.gpus, 1, 1 << 16);
  check_int("planner sms_per_gpu", c.sms_per_gpu, 1, 1 << 16);
  check_int("planner granularity", c.granularity, 1, 1 << 16);
  check_int("planner split_sms", c.split_sms, 0, 1 << 16);
  check_real("planner memory_gb", c.memory_gb, 0, 1e6, /*open_lo=*/true);
  check_real("planner safety", c.safety, 1, 100);
  check_int("planner max_models_per_lane", c.max_models_per_lane, 1, 1024);
  check_real("planner assumed_dispersion", c.assumed_dispersion, 0, 1e6);
  check_real("planner max_headroom", c.max_headroom, 1, 1e3);
  if (c.interference.size() != 5) {
    throw Error(ErrorCode::kInvalidInput, "planner interference needs 5 coefficients, got " +
                                              std::to_string(c.interference.size()));
  }
  for (double x : c.interference) check_real("planner interference coefficients", x, -1e6, 1e6);
}

bool lane_fits(const PlannerConfig& config, int used, int sms) {
  if (sms >= config.sms_per_gpu) return used == 0;
  const int split = config.split_sms > 0 ? std::min(config.split_sms, config.sms_per_gpu)
                                         : config.sms_per_gpu;
  return used + sms <= split;
}

namespace {

// The models at their burst rates (the plan sizes lanes for these).
std::vector<PlannerModel> at_burst_rates(const std::vector<PlannerModel>& models,
                                         const PlannerConfig& config) {
  std::vector<PlannerModel> out = models;
  for (PlannerModel& m : out) {
    const double d = m.dispersion < 0 ? config.assumed_dispersion : m.dispersion;
    m.rate = std::max(burst_rate(m.rate, d, m.slo), m.rate > 0 ? m.peak_rate : 0.0);
  }
  return out;
}

// Fills planned_rate (burst rates x headroom) and restates unplaced_rate in mean requests/s:
// the mean rate whose burst the placed lanes hold is served, the rest is not.
void finish(Plan& plan, const std::vector<PlannerModel>& models,
            const std::vector<PlannerModel>& burst, double headroom, int gpus_needed,
            const PlannerConfig& config) {
  plan.headroom = headroom;
  plan.gpus_needed = gpus_needed;
  plan.planned_rate.resize(models.size());
  for (std::size_t i = 0; i < models.size(); ++i) {
    const double planned = burst[i].rate * headroom;
    plan.planned_rate[i] = planned - plan.unplaced_rate[i];
    if (plan.unplaced_rate[i] <= 0) continue;
    const double d = models[i].dispersion < 0 ? config.assumed_dispersion : models[i].dispersion;
    plan.unplaced_rate[i] =
        std::max(0.0, models[i].rate - mean_for_burst(plan.planned_rate[i], d, models[i].slo));
  }
}

// The plan for `models` (already at burst rates), max-min fair when the GPUs cannot hold them.
Plan plan_or_share(const std::vector<PlannerModel>& models, const PlannerConfig& config);

}  // namespace

Plan make_plan(const std::vector<PlannerModel>& models, const PlannerConfig& config) {
  validate(config);
  for (const PlannerModel& m : models) {
    if (!std::isfinite(m.rate) || m.rate < 0) {
      throw Error(ErrorCode::kInvalidInput, "model '" + m.name + "': rate must be >= 0");
    }
    if (!std::isfinite(m.dispersion)) {
      throw Error(ErrorCode::kInvalidInput, "model '" + m.name + "': dispersion must be finite");
    }
    if (!std::isfinite(m.peak_rate) || m.peak_rate < 0) {
      throw Error(ErrorCode::kInvalidInput, "model '" + m.name + "': peak_rate must be >= 0");
    }
  }
  const std::vector<PlannerModel> burst = at_burst_rates(models, config);
  if (config.variant == "self_tuning") {
    Plan p = self_tuning_start(burst, config);
    finish(p, models, burst, 1.0, p.gpus_used, config);
    return p;
  }
  Plan plan = plan_or_share(burst, config);
  const int needed = plan.gpus_used;
  double headroom = 1.0;
  if (plan.feasible && config.spread && plan.gpus_used < config.gpus && config.max_headroom > 1) {
    // The largest headroom whose plan still fits the budget (bisection; plans are cheap).
    double lo = 1.0, hi = config.max_headroom;
    std::vector<PlannerModel> scaled = burst;
    for (int it = 0; it < 8; ++it) {
      const double k = it == 0 ? hi : (lo + hi) / 2;
      for (std::size_t i = 0; i < burst.size(); ++i) scaled[i].rate = burst[i].rate * k;
      Plan p = Planner(scaled, config).run();
      if (p.feasible) {
        lo = k;
        plan = std::move(p);
        if (it == 0) break;  // the whole headroom fits
      } else {
        hi = k;
      }
    }
    headroom = lo;
  }
  finish(plan, models, burst, headroom, needed, config);
  return plan;
}

namespace {

Plan plan_or_share(const std::vector<PlannerModel>& models, const PlannerConfig& config) {
  Plan full = Planner(models, config).run();
  if (full.feasible) return full;
  // Overloaded: share the GPUs max-min fairly. Each model asks for rate x cost GPUs; find the
  // largest cap C (to 1/8192 of a GPU per GPU) such that serving min(demand, C) of every
  // model fits. Light models keep their whole rate, heavy ones are cut to the same GPU share,
  // and every model keeps a lane (the greedy plan alone starves the models it places last).
  std::vector<double> cost(models.size()), demand(models.size());
  double most = 0;
  for (std::size_t i = 0; i < models.size(); ++i) {
    if (!models[i].profile) return full;  // Planner() threw already; unreachable
    cost[i] = gpu_seconds_per_request(models[i], config);
    demand[i] = models[i].rate * cost[i];
    most = std::max(most, demand[i]);
  }
  std::vector<PlannerModel> capped = models;
  // Lanes smaller than a GPU can serve several times what a whole GPU does per SM (batching
  // stops paying off before a GPU is full), so a model may get more than `gpus` whole-GPU units.
  double lo = 0, hi = std::min(most, 8.0 * config.gpus);
  std::optional<Plan> best;
  for (int it = 0; it < 16 && most > 0; ++it) {
    const double cap = (lo + hi) / 2;
    for (std::size_t i = 0; i < models.size(); ++i) {
      capped[i].rate = cost[i] > 0 && demand[i] > cap ? cap / cost[i] : models[i].rate;
    }
    Plan p = Planner(capped, config).run();
    if (p.feasible) {
      lo = cap;
      best = std::move(p);
    } else {
      hi = cap;
    }
  }
  if (!best) return full;  // not even a sliver fits: say what could not be placed as it is
  best->feasible = false;
  for (std::size_t i = 0; i < models.size(); ++i) {
    const double served = cost[i] > 0 && demand[i] > lo ? lo / cost[i] : models[i].rate;
    best->unplaced_rate[i] = std::max(0.0, models[i].rate - served);
  }
  return *best;
}

}  // namespace

bool plan_meets_slos(const Plan& plan, const std::vector<PlannerModel>& models,
                     const PlannerConfig& config) {
  PlannerConfig checking = config;
  checking.variant = "spatiotemporal";  // always judge with interference
  Planner judge(models, checking);
  std::vector<PlannedLane> lanes = plan.lanes;
  for (int g = 0; g < plan.gpus_used; ++g) {
    if (!judge.gpu_ok(lanes, g)) return false;
  }
  return true;
}

}  // namespace gpulanes
