#include "gpulanes/plan/self_tuning.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "gpulanes/core/error.h"

namespace gpulanes {
namespace {

// The most SMs one more lane may take on `gpu` under `plan` (lane_fits): the whole GPU when it
// is empty, else what the lanes splitting it leave of cfg.split_sms, in whole granules.
int free_sms(const Plan& plan, int gpu, const PlannerConfig& cfg) {
  int used = 0;
  for (const PlannedLane& l : plan.lanes) used += l.gpu == gpu ? l.sms : 0;
  if (used == 0) return cfg.sms_per_gpu;
  const int g = std::max(1, cfg.granularity);
  int room = g * ((cfg.sms_per_gpu - used) / g);
  while (room > 0 && !lane_fits(cfg, used, room)) room -= g;
  return std::max(0, room);
}

int round_up(double sms, const PlannerConfig& cfg) {
  const int g = std::max(1, cfg.granularity);
  const int n = static_cast<int>(std::ceil(std::max(1.0, sms) / g)) * g;
  return std::min(n, cfg.sms_per_gpu);
}

PlannedLane lane_for(int m, int gpu, int sms, const PlannerModel& model) {
  PlannedLane lane;
  lane.gpu = gpu;
  lane.sms = sms;
  lane.models.push_back({m, model.max_batch_size, model.rate, 0});
  return lane;
}

void count_gpus(Plan& plan) {
  plan.gpus_used = 0;
  for (const PlannedLane& l : plan.lanes) plan.gpus_used = std::max(plan.gpus_used, l.gpu + 1);
}

}  // namespace

Plan self_tuning_start(const std::vector<PlannerModel>& models, const PlannerConfig& cfg,
                       const SelfTuningConfig& tuning) {
  Plan plan;
  plan.variant = "self_tuning";
  plan.unplaced_rate.assign(models.size(), 0.0);
  // SMs each model needs: its rate at its whole-GPU throughput (largest batch with 2 L <= SLO),
  // at the target busy fraction. The profile is the only knowledge it starts with.
  std::vector<std::pair<double, int>> need;
  for (std::size_t m = 0; m < models.size(); ++m) {
    const PlannerModel& pm = models[m];
    if (!pm.profile) throw Error(ErrorCode::kInvalidInput, "model '" + pm.name + "' has no profile");
    double per_request_s = 0;
    for (int b = pm.max_batch_size; b >= 1; --b) {
      const double l = pm.profile->solo_ns(b, 1.0) / 1e9;
      if (2 * l * 1e9 <= pm.slo || b == 1) {
        per_request_s = l / b;
        break;
      }
    }
    need.emplace_back(pm.rate * per_request_s / tuning.target_busy * cfg.sms_per_gpu,
                      static_cast<int>(m));
  }
  std::stable_sort(need.begin(), need.end(), [](auto& a, auto& b) { return a.first > b.first; });
  for (auto [sms_needed, m] : need) {
    double left = sms_needed;
    do {
      const int want = round_up(std::min<double>(left, cfg.sms_per_gpu), cfg);
      // First fit; else the GPU with the most room, at what it has.
      int gpu = -1, best = -1, room = 0;
      for (int g = 0; g < cfg.gpus && gpu < 0; ++g) {
        const int f = free_sms(plan, g, cfg);
        if (f >= want) gpu = g;
        if (f > room) room = f, best = g;
      }
      const int sms = gpu >= 0 ? want : room;
      if (gpu < 0) gpu = best;
      if (sms == 0) {
        plan.unplaced_rate[m] = models[m].rate * left / std::max(1e-9, sms_needed);
        break;
      }
      plan.lanes.push_back(lane_for(m, gpu, sms, models[m]));
      left -= sms;
    } while (left > 0.5 * cfg.granularity);
  }
  // A model's rate is split over its lanes by their SMs.
  for (std::size_t m = 0; m < models.size(); ++m) {
    int total = 0;
    for (const PlannedLane& l : plan.lanes) total += l.models[0].model == static_cast<int>(m) ? l.sms : 0;
    const double placed = models[m].rate - plan.unplaced_rate[m];
    for (PlannedLane& l : plan.lanes) {
      if (l.models[0].model == static_cast<int>(m)) l.models[0].rate = placed * l.sms / std::max(1, total);
    }
  }
  plan.feasible = std::all_of(plan.unplaced_rate.begin(), plan.unplaced_rate.end(),
                              [](double r) { return r <= 1e-9; });
  count_gpus(plan);
  return plan;
}

Plan self_tuning_step(const Plan& current, const std::vector<LaneFeedback>& feedback,
                      const std::vector<PlannerModel>& models, const PlannerConfig& cfg,
                      const SelfTuningConfig& tuning) {
  if (feedback.size() != current.lanes.size()) {
    throw Error(ErrorCode::kInvalidInput, "self_tuning needs feedback for every lane");
  }
  const int g = std::max(1, cfg.granularity);
  Plan plan = current;
  plan.variant = "self_tuning";
  auto grow = [&](std::size_t i) {
    return feedback[i].attainment < tuning.grow_below || feedback[i].busy > tuning.grow_busy;
  };
  // Shrink first: what idle lanes give back is what struggling ones can take.
  for (std::size_t i = 0; i < plan.lanes.size(); ++i) {
    if (!grow(i) && feedback[i].busy < tuning.shrink_busy && plan.lanes[i].sms > g) {
      plan.lanes[i].sms -= g;
    }
  }
  const std::size_t n = plan.lanes.size();  // siblings added below get no feedback
  for (std::size_t i = 0; i < n; ++i) {
    if (!grow(i)) continue;
    PlannedLane& lane = plan.lanes[i];
    if (lane.sms + g <= cfg.sms_per_gpu && free_sms(plan, lane.gpu, cfg) >= g) {
      lane.sms += g;
      continue;
    }
    // Take a granule from the least busy lane of the same GPU that is not struggling itself.
    std::size_t donor = n;
    for (std::size_t j = 0; j < n; ++j) {
      if (j == i || plan.lanes[j].gpu != lane.gpu || grow(j) || plan.lanes[j].sms <= g) continue;
      if (donor == n || feedback[j].busy < feedback[donor].busy) donor = j;
    }
    if (donor < n && lane.sms + g <= cfg.sms_per_gpu) {
      plan.lanes[donor].sms -= g;
      lane.sms += g;
      continue;
    }
    // No room on its GPU: a sibling lane for its (first) model on a GPU that has some.
    const int m = lane.models[0].model;
    for (int gpu = 0; gpu < cfg.gpus; ++gpu) {
      if (free_sms(plan, gpu, cfg) >= 2 * g) {
        plan.lanes.push_back(lane_for(m, gpu, 2 * g, models[m]));  // invalidates `lane`
        break;
      }
    }
  }
  count_gpus(plan);
  return plan;
}

void FeedbackMeter::reset(TimeNs now, const std::vector<LaneStats>& lanes,
                          const std::vector<ModelStats>& models) {
  since_ = now;
  busy_s_.clear();
  for (const LaneStats& l : lanes) busy_s_.push_back(l.busy_s);
  met_.clear();
  bad_.clear();
  for (const ModelStats& m : models) {
    met_.push_back(m.met);
    bad_.push_back(m.missed + m.dropped);
  }
}

std::vector<LaneFeedback> FeedbackMeter::measure(TimeNs now, const std::vector<LaneStats>& lanes,
                                                 const std::vector<ModelStats>& models,
                                                 const Plan& plan) {
  const double span = std::max(1e-9, (now - since_) / 1e9);
  std::vector<double> attainment(models.size(), 1.0);
  for (std::size_t m = 0; m < models.size(); ++m) {
    const double met = static_cast<double>(models[m].met - (m < met_.size() ? met_[m] : 0));
    const double bad = static_cast<double>(models[m].missed + models[m].dropped -
                                           (m < bad_.size() ? bad_[m] : 0));
    if (met + bad > 0) attainment[m] = met / (met + bad);
  }
  std::vector<LaneFeedback> out(plan.lanes.size());
  for (std::size_t i = 0; i < plan.lanes.size(); ++i) {
    if (i < lanes.size()) {
      const double before = i < busy_s_.size() ? busy_s_[i] : 0.0;
      out[i].busy = std::clamp((lanes[i].busy_s - before) / span, 0.0, 1.0);
    }
    for (const PlannedModel& pm : plan.lanes[i].models) {
      out[i].attainment = std::min(out[i].attainment, attainment[pm.model]);
    }
  }
  reset(now, lanes, models);
  return out;
}

}  // namespace gpulanes
