// The Runtime's planning half: measured rates, the planner over this runtime's devices, and
// applying a plan while serving (a lane layout through set_lanes, admission limits for what did
// not fit). The planner thread re-plans on the Replanner's schedule, the same trigger and
// planner the simulator uses (sim/simulator.cpp), so a plan evaluated there is the plan served
// here.
#include <algorithm>
#include <chrono>
#include <cstdio>

#include "gpulanes/core/error.h"
#include "gpulanes/exec/executor.h"
#include "gpulanes/exec/green_context.h"
#include "gpulanes/plan/self_tuning.h"
#include "gpulanes/runtime/runtime.h"

namespace gpulanes {

void Runtime::set_planner_profile(const std::string& model, ShareProfile profile) {
  const int m = models_.find(model);
  if (m < 0) throw Error(ErrorCode::kUnknownModel, "no model named '" + model + "' is registered");
  std::lock_guard<std::mutex> lock(plan_mu_);
  if (static_cast<int>(plan_profiles_.size()) <= m) plan_profiles_.resize(m + 1);
  plan_profiles_[m] = std::move(profile);
}

PlannerConfig Runtime::planner_config() const {
  PlannerConfig cfg = options_.replan.planner;
  const std::string& dev = options_.device;
  if (dev == "virtual") {
    throw Error(ErrorCode::kInvalidInput, "a virtual runtime is planned by its simulator");
  }
  if (on_cpu()) {
    // CPU lanes have no SMs to split: the planner packs models into at most cpu_lanes lanes.
    cfg.gpus = options_.cpu_lanes;
    cfg.sms_per_gpu = 1;
    cfg.granularity = 1;
  } else {
    cfg.gpus = dev.rfind("cuda:", 0) == 0 ? 1 : cuda_device_count();
    const int first = dev.rfind("cuda:", 0) == 0 ? std::stoi(dev.substr(5)) : 0;
    cfg.sms_per_gpu = cuda_sm_count(first);
    fit_to_split(cfg);
  }
  return cfg;
}

void Runtime::fit_to_split(PlannerConfig& cfg) const {
  const std::string& how = options_.partitioning;
  if (on_cpu() || (how != "green" && how != "auto")) return;
  const int first = options_.device.rfind("cuda:", 0) == 0 ? std::stoi(options_.device.substr(5)) : 0;
  // Green lanes are whole groups of the device's one split: whatever granularity was asked,
  // lane sizes are multiples of a group and the lanes of a GPU fit in the split.
  SmSplit split;
  try {
    split = green_sm_split(first);  // one dry run answers both "supported?" and "how?"
  } catch (const Error&) {
    return;  // no green contexts here: lanes are plain streams
  }
  const int g = split.group_sms;
  cfg.sms_per_gpu = split.device_sms;
  cfg.granularity = std::max(g, (cfg.granularity + g - 1) / g * g);
  cfg.split_sms = cfg.split_sms > 0 ? std::min(cfg.split_sms, split.usable_sms()) : split.usable_sms();
}

std::vector<double> Runtime::measured_rates() const {
  if (replanner_) {
    std::lock_guard<std::mutex> lock(plan_mu_);  // the planner thread updates its rates
    return replanner_->planning_rates();
  }
  const TimeNs now = clock_->now();
  std::vector<double> out;
  for (int m = 0; m < models_.size(); ++m) {
    const ArrivalRate* r = rates_[m].get();
    const DurationNs gap = r->mean_gap();
    if (gap == kNever || gap <= 0) {
      out.push_back(0.0);
      continue;
    }
    // A model that stopped sending is slower than its last gaps say.
    out.push_back(1e9 / std::max<double>(gap, static_cast<double>(now - r->last())));
  }
  return out;
}

std::vector<TrafficShape> Runtime::traffic() const {
  if (!shape_) throw Error(ErrorCode::kInvalidInput, "traffic() needs a started runtime");
  return shape_->snapshot(clock_->now());
}

std::vector<PlannerModel> Runtime::planner_models(const std::vector<double>& rates,
                                                  std::vector<ShareProfile>& measured,
                                                  const std::vector<double>& dispersion) const {
  const int n = models_.size();
  if (static_cast<int>(rates.size()) != n) {
    throw Error(ErrorCode::kInvalidInput, "plan() takes one rate per registered model");
  }
  if (!dispersion.empty() && static_cast<int>(dispersion.size()) != n) {
    throw Error(ErrorCode::kInvalidInput, "plan() takes one dispersion per registered model");
  }
  const std::vector<TrafficShape> seen = traffic();
  // Without a per-share profile, the measured one stands for the share it was measured at (the
  // whole device, unless only partition lanes served the model); the planner extrapolates other
  // shares from it (predict/share_profile.h).
  measured.assign(n, ShareProfile());
  std::vector<PlannerModel> pm;
  for (int m = 0; m < n; ++m) {
    const ModelSpec& spec = models_.at(m).spec;
    const ShareProfile* profile = nullptr;
    if (m < static_cast<int>(plan_profiles_.size()) && plan_profiles_[m]) {
      profile = &*plan_profiles_[m];
    } else {
      SharePoints whole;
      {
        // Lane threads measure a model being registered, which may be in a reused slot.
        std::lock_guard<std::mutex> lock(partition_mu_);
        whole.points = profiles_[m].points();
        whole.share = profile_origins_[m].sm_share;
      }
      for (const LatencyPoint& p : whole.points) {
        whole.l2[p.batch_size] = p.l2;
        whole.dram[p.batch_size] = p.dram;
      }
      measured[m] = ShareProfile({std::move(whole)}, 0.0);
      profile = &measured[m];
    }
    // The measured peak counts only when the burstiness is taken as measured. An unregistered
    // model keeps its index with nothing to place.
    pm.push_back({spec.name, models_.retired(m) ? 0.0 : rates[m], spec.slo, spec.max_batch_size, profile,
                  dispersion.empty() ? seen[m].dispersion : dispersion[m],
                  dispersion.empty() && seen[m].dispersion >= 0 ? seen[m].peak_rate : 0.0});
  }
  return pm;
}

Runtime::PlanOutcome Runtime::plan(const std::vector<double>& rates, const PlannerConfig& config,
                                   const std::vector<double>& dispersion, bool check) const {
  if (started_at_.load(std::memory_order_acquire) == 0) {
    throw Error(ErrorCode::kInvalidInput, "plan() needs a started runtime (profiles)");
  }
  std::vector<ShareProfile> measured;
  std::lock_guard<std::mutex> lock(plan_mu_);
  const std::vector<PlannerModel> models = planner_models(rates, measured, dispersion);
  PlannerConfig cfg = config;
  fit_to_split(cfg);
  PlanOutcome out;
  if (check && cfg.variant != "self_tuning") {
    CheckedPlan c = make_checked_plan(models, cfg, PlanCheckOptions{});
    out.plan = std::move(c.plan);
    out.check = std::move(c.check);
    out.why = std::move(c.why);
  } else {
    out.plan = make_plan(models, cfg);
  }
  out.meets_slos = plan_meets_slos(out.plan, models, cfg);
  return out;
}

bool Runtime::apply_plan(const Plan& plan, const std::vector<double>& rates, bool admission,
                         double admit_fraction) {
  const bool cpu = on_cpu();
  const bool single = options_.device.rfind("cuda:", 0) == 0;
  std::vector<LaneSpec> layout;
  for (const PlannedLane& l : plan.lanes) {
    LaneSpec spec;
    spec.device = cpu ? "cpu" : single ? options_.device : "cuda:" + std::to_string(l.gpu);
    spec.sms = cpu ? 0 : l.sms;
    for (const PlannedModel& p : l.models) {
      if (!models_.retired(p.model)) spec.models.push_back(models_.at(p.model).spec.name);
    }
    if (!spec.models.empty() || l.models.empty()) layout.push_back(std::move(spec));
  }
  // A plan may leave a model out (no rate placed for it); the layout never does: such a model
  // shares the lane with the fewest models, and admission sheds what the plan did not place
  // (Overloaded), so a registered model is never refused as unserved.
  if (layout.empty()) layout.push_back({cpu ? "cpu" : single ? options_.device : "cuda:0", 0, {}});
  for (int m = 0; m < models_.size(); ++m) {
    if (models_.retired(m)) continue;
    const std::string& name = models_.at(m).spec.name;
    auto has = [&](const LaneSpec& s) {
      return s.models.empty() || std::find(s.models.begin(), s.models.end(), name) != s.models.end();
    };
    if (std::any_of(layout.begin(), layout.end(), has)) continue;
    auto fewest = std::min_element(layout.begin(), layout.end(), [](const LaneSpec& a, const LaneSpec& b) {
      return a.models.size() < b.models.size();
    });
    fewest->models.push_back(name);
  }
  bool changed;
  {
    std::lock_guard<std::mutex> lock(control_mu_);
    changed = layout.size() != layout_.size() ||
              !std::equal(layout.begin(), layout.end(), layout_.begin(),
                          [](const LaneSpec& a, const LaneSpec& b) {
                            return a.device == b.device && a.sms == b.sms && a.models == b.models;
                          });
  }
  if (changed) set_lanes(std::move(layout));
  set_admission_limits(admission ? admission_limits(plan, rates, admit_fraction)
                                 : std::vector<double>{});
  return changed;
}

void Runtime::set_admission_limits(const std::vector<double>& limits) {
  if (!admission_) throw Error(ErrorCode::kInvalidInput, "admission limits need a started runtime");
  admission_->set_limits(limits, clock_->now());
}

std::vector<ReplanEvent> Runtime::replans() const {
  std::lock_guard<std::mutex> lock(plan_mu_);
  return replans_;
}

void Runtime::planner_main() {
  const PlannerConfig config = planner_config();
  const bool tuning = config.variant == "self_tuning";
  std::optional<Plan> applied;  // the last plan this thread applied (self_tuning steps from it)
  FeedbackMeter feedback;       // self_tuning: what the lanes did between re-plans
  feedback.reset(clock_->now(), lane_stats(), stats());
  std::unique_lock<std::mutex> lock(plan_mu_);
  while (!plan_stop_) {
    const auto at = std::chrono::steady_clock::time_point(
        std::chrono::nanoseconds(replanner_->next_tick()));
    plan_cv_.wait_until(lock, at, [&] { return plan_stop_; });
    if (plan_stop_) break;
    ReplanEvent event;
    if (!replanner_->due(clock_->now(), &event)) continue;
    try {
      const auto t0 = std::chrono::steady_clock::now();
      Plan p;
      if (tuning && applied) {
        std::vector<ShareProfile> measured;
        const auto fb = feedback.measure(clock_->now(), lane_stats(), stats(), *applied);
        p = self_tuning_step(*applied, fb, planner_models(event.rates, measured), config);
      } else {
        // Sized for each model's measured burst and proven by simulation before it is applied.
        std::vector<ShareProfile> measured;
        const std::vector<PlannerModel> models = planner_models(event.rates, measured);
        for (const PlannerModel& m : models) event.dispersion.push_back(m.dispersion);
        if (tuning) {
          p = make_plan(models, config);
        } else {
          CheckedPlan c = make_checked_plan(models, config, PlanCheckOptions{});
          p = std::move(c.plan);
          event.gpus_needed = c.gpus_needed;
          event.simulated_attainment = c.check.ran ? c.check.min_attainment : -1;
          event.why = std::move(c.why);
        }
      }
      const auto t1 = std::chrono::steady_clock::now();
      event.plan_wall_us = std::chrono::duration<double, std::micro>(t1 - t0).count();
      event.gpus_used = p.gpus_used;
      event.feasible = p.feasible;
      event.lanes = static_cast<int>(p.lanes.size());
      lock.unlock();  // set_lanes() takes control_mu_ and waits for running batches
      event.changed = apply_plan(p, event.rates, options_.replan.admission,
                                 options_.replan.admit_fraction);
      lock.lock();
      event.apply_wall_ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t1).count();
      if (event.changed) {
        event.applied_t_s = (clock_->now() - started_at_.load()) / 1e9;
        feedback.reset(clock_->now(), lane_stats(), stats());  // new lanes, new statistics
      }
      applied = std::move(p);
    } catch (const std::exception& e) {
      // Serving goes on with the old layout; a plan that cannot be applied is not fatal.
      if (!lock.owns_lock()) lock.lock();
      std::fprintf(stderr, "gpulanes: re-planning failed: %s\n", e.what());
    }
    replans_.push_back(std::move(event));
  }
}

void Runtime::stop_planner() {
  {
    std::lock_guard<std::mutex> lock(plan_mu_);
    plan_stop_ = true;
  }
  plan_cv_.notify_all();
  if (planner_thread_.joinable()) planner_thread_.join();
}

}  // namespace gpulanes
