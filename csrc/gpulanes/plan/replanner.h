// When to re-plan and for which rates: the one rate estimator and trigger that both the
// simulator's loop and the runtime's planner thread use. It owns a per-model count of the
// arrivals offered since the last plan (atomics: every submitting thread calls on_arrival(),
// shed requests included, so an overloaded model's demand stays visible) and the EWMA of those
// windows' rates. due() is called by one thread only (the owner's planning thread); it reads the
// counters with relaxed loads, so a window may miss the arrivals racing with it: they count in
// the next one.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "gpulanes/core/time.h"
#include "gpulanes/plan/planner.h"

namespace gpulanes {

// Re-planning while serving: every `every_s`, or earlier when a model's rate since the last
// re-plan drifts from the planned one by more than `drift` (checked every `check_s`), the rates
// seen since the last re-plan (smoothed by an EWMA) go to the planner, and a layout that differs
// is applied: dispatching pauses, running batches finish, the new lanes take over; queued
// requests stay queued.
struct ReplanOptions {
  double every_s = 0;         // 0: never re-plan
  double alpha = 0.5;         // EWMA weight of the newest window's rate
  double min_rate = 1.0;      // requests/s every model is planned for, so it keeps a lane
  double drift = 0;           // relative rate change that re-plans early; 0: timer only
  double check_s = 1.0;       // how often drift is checked
  std::vector<double> initial_rates;  // by model: what the starting layout was planned for
                                      // (empty or < 0: unknown until the first re-plan)
  bool admission = true;      // when the plan cannot place a model's whole rate, shed the excess
  double admit_fraction = 0.9;  // ...admitting this fraction of the rate it placed: a lane
                                // planned at its saturated throughput has no slack for bursts
  PlannerConfig planner;      // variant, GPUs, granularity, interference coefficients
};

struct ReplanEvent {
  double t_s = 0;             // when it planned (seconds from the start)
  bool drift = false;         // triggered by rate drift rather than the timer
  int gpus_used = 0;
  bool feasible = true;
  bool changed = false;       // the layout differed and was applied
  double applied_t_s = -1;    // when the new lanes took over (after running batches ended)
  double plan_wall_us = 0;    // what planning cost, wall clock
  double apply_wall_ms = 0;   // what applying cost, wall clock (new lanes built and warmed up)
  int lanes = 0;
  std::vector<double> rates;  // by model: the rates it planned for
  std::vector<double> dispersion;  // by model: the burstiness it planned for (< 0: unknown)
  int gpus_needed = 0;        // fewest GPUs a plan held the target on in simulation (0: none)
  double simulated_attainment = -1;  // the applied plan's worst model in simulation (< 0: none)
  std::string why;            // a fallback, or why no plan held
};

// Throws Error(kInvalidInput) naming the first option (or planner option) outside its range.
void validate(const ReplanOptions& options);

class Replanner {
 public:
  // Throws Error(kInvalidInput) for negative periods or an alpha outside (0, 1]. Room for
  // `capacity` models (add_model()).
  Replanner(ReplanOptions options, int n_models, TimeNs start, int capacity = 0);
  // One more model, rate unknown so far. Called where due() and planning_rates() are (the
  // runtime's plan_mu_); arrivals of the new model come only after it.
  void add_model();
  // Model `model`'s slot starts over for another model, rate unknown; as add_model().
  void reset_model(int model);

  const ReplanOptions& options() const { return opt_; }
  bool enabled() const { return every_ > 0; }
  // Any thread: one request of `model` was offered.
  void on_arrival(int model) { window_[model].fetch_add(1, std::memory_order_relaxed); }
  // The next time due() has something to check (kNever when re-planning is off).
  TimeNs next_tick() const { return std::min(next_replan_, next_check_); }
  // At `now`: whether to plan now (the timer, or a drifted rate). If so, the window's rates are
  // folded into rates(), a new window starts and `event` gets the time, trigger and rates.
  bool due(TimeNs now, ReplanEvent* event);
  // The rates to plan for: the EWMA, at least min_rate (unknown: min_rate).
  std::vector<double> planning_rates() const;

 private:
  const ReplanOptions opt_;
  const TimeNs origin_;                          // time 0 of event times
  const DurationNs every_, check_;               // periods; 0: off
  std::unique_ptr<std::atomic<double>[]> window_;  // arrivals since window_start_, by model
  const int capacity_;                           // window_ entries
  int n_models_;
  TimeNs window_start_;
  TimeNs next_replan_, next_check_;
  std::vector<double> rate_;                     // EWMA by model; < 0: unknown
};

// A plan's admission limits: by model, `fraction` of the requests/s its lanes were sized for
// (planned_rate; a plan without it: the mean rate placed) when it could not place the whole
// rate; < 0 (no limit) for every model it placed fully.
std::vector<double> admission_limits(const Plan& plan, const std::vector<double>& rates,
                                     double fraction);

}  // namespace gpulanes
