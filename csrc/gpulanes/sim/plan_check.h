// Plans checked by simulation before anyone applies them: the planner's rules (saturated lanes,
// residue rules, a burst-rate margin) are arithmetic on means and a percentile; whether a plan
// holds its SLOs under traffic with the measured burstiness is a question for the simulator,
// which runs the same scheduler on the planned lanes for a few simulated seconds of Gamma
// arrivals at each model's rate and measured dispersion.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gpulanes/plan/planner.h"
#include "gpulanes/sim/interference.h"

namespace gpulanes {

struct PlanCheckOptions {
  double seconds = 4;             // simulated seconds of traffic (the first quarter warms up)
  double target = 0.99;           // every model's SLO attainment must reach this
  std::uint64_t seed = 1;
  std::shared_ptr<InterferenceModel> interference;  // null: the planner's linear coefficients
};

struct PlanCheck {
  bool ran = false;               // a simulation ran (a plan with no lanes has nothing to run)
  bool passed = false;            // every model reached the target
  double min_attainment = 0;      // the worst model's
  std::vector<double> attainment; // by model (1 for a model with no traffic)
};

// Simulates `plan` serving `models` at the mean rates it placed (what it could not place is
// shed at submit; a measured peak_rate raises the rate to the mean whose bursts reach it), with
// Gamma gaps of CV sqrt(dispersion) (unknown: config.assumed_dispersion;
// 0: evenly spaced), for at most options.seconds and 400,000 arrivals.
PlanCheck simulate_plan(const Plan& plan, const std::vector<PlannerModel>& models,
                        const PlannerConfig& config, const PlanCheckOptions& options);

struct CheckedPlan {
  Plan plan;                      // what to apply
  PlanCheck check;                // its simulation
  int gpus_needed = 0;            // fewest GPUs whose plan held the target in simulation
                                  // (0: none within the budget)
  std::string why;                // empty when the planner's own plan held; else what fell
                                  // back to what, or why nothing held
};

// make_plan, then proof by simulation: the fewest GPUs (no spreading) whose plan holds the
// target give gpus_needed; the plan to apply is the variant's plan spread over the budget if it
// holds, else temporal sharing of whole GPUs (spread) if that holds, else whichever simulated
// best, with `why` saying so.
CheckedPlan make_checked_plan(const std::vector<PlannerModel>& models, const PlannerConfig& config,
                              const PlanCheckOptions& options);

}  // namespace gpulanes
