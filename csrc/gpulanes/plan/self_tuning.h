// The `self_tuning` planner variant: a feedback baseline in the spirit of GSLICE's self-tuning
// partitioner (shared/REFERENCES.md names it among gpu-let's baselines). It uses no interference
// model and checks no SLO when it plans: one lane per model, sized from the measured rate and the
// whole-GPU profile, then every re-plan nudges each lane by what it did since the last one (grow
// a lane that missed deadlines or ran nearly always busy, shrink one that idled). Batch sizes are
// the deadline policy's, which adapts them per batch. Pure functions; the caller (the
// simulator's or the runtime's re-planning) measures the feedback and applies the plan.
#pragma once

#include <cstdint>
#include <vector>

#include "gpulanes/metrics/lane_metrics.h"
#include "gpulanes/metrics/model_metrics.h"
#include "gpulanes/plan/planner.h"

namespace gpulanes {

// What one lane of the current plan did since the last re-plan.
struct LaneFeedback {
  double busy = 0;        // fraction of the time it ran batches
  double attainment = 1;  // worst SLO attainment among its models (dropped requests count)
};

struct SelfTuningConfig {
  double target_busy = 0.7;  // initial sizing: lanes this busy at the measured rate
  double grow_busy = 0.85;   // grow a lane busier than this...
  double grow_below = 0.99;  // ...or whose models met fewer deadlines than this
  double shrink_busy = 0.4;  // shrink a lane idler than this (if its models met their SLOs)
};

// The starting plan for `models` (their rates): one lane per model (more for a model that needs
// more than a GPU), first-fit decreasing onto the GPUs; lanes that do not fit are cut to what is
// left and the rate they cannot serve is unplaced.
Plan self_tuning_start(const std::vector<PlannerModel>& models, const PlannerConfig& config,
                       const SelfTuningConfig& tuning = {});

// One feedback step from `current` (lanes in order, `feedback[i]` for lane i): shrink idle lanes,
// then grow struggling ones by one granule from free SMs, else from the least busy lane on their
// GPU; a lane already as large as a GPU gets a sibling on a GPU with room.
Plan self_tuning_step(const Plan& current, const std::vector<LaneFeedback>& feedback,
                      const std::vector<PlannerModel>& models, const PlannerConfig& config,
                      const SelfTuningConfig& tuning = {});

// Measures LaneFeedback between re-plans from a runtime's cumulative statistics: per lane the
// busy seconds (lane statistics restart with each layout, so reset() after a swap), per model
// the met and late-or-dropped counts. Used by one thread, the owner's planning thread.
class FeedbackMeter {
 public:
  // Baselines: from `now` on.
  void reset(TimeNs now, const std::vector<LaneStats>& lanes, const std::vector<ModelStats>& models);
  // What each lane of `plan` (the layout serving since the last call) did since then; the
  // baselines move to `now`.
  std::vector<LaneFeedback> measure(TimeNs now, const std::vector<LaneStats>& lanes,
                                    const std::vector<ModelStats>& models, const Plan& plan);

 private:
  TimeNs since_ = 0;                   // start of the window
  std::vector<double> busy_s_;         // by lane
  std::vector<std::uint64_t> met_, bad_;  // by model
};

}  // namespace gpulanes
