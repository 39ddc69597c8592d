// The spatio-temporal planner: how many GPUs, how each splits into lanes (SM counts at the
// device's granularity), which models each lane serves and with which batch, from request rates
// and SLOs. It generalizes the gpu-let algorithm (shared/REFERENCES.md) from 20..100% MPS shares
// to SM-count lanes:
//   - per model, the saturated throughput of a lane of each size (largest batch b with
//     2 L(b) <= SLO: a request may wait one batch, then run one); its "ideal" size is the upper
//     end of the steepest step of throughput against SMs (steps under 5% gain ignored);
//   - models in ascending rate x SLO order: saturated lanes of the ideal size while the rate
//     left exceeds one's capacity, then a residue lane of the smallest size that serves the rest
//     (L(b) + max((b - 1) / r, L(b)) <= SLO: a request waits for its batch to fill or for the
//     batch ahead; gpu-let counts b / r, which refuses low rates with tight SLOs), or temporal
//     sharing of an existing residue lane (up to 3 models:
//     sum of latencies <= duty cycle and sum of latencies + duty cycle <= every SLO);
//   - lanes placed best-fit on GPUs, each placement checked for every affected lane against its
//     SLO under the interference the co-runners predict; a GPU is added when none fits, and when
//     all GPUs are used the plan says which rate it could not place.
// Latencies are the profile's solo latency at the lane's share times a safety factor (1.1).
// Variants: "spatiotemporal" (ours), "no_interference" (placement ignores interference),
// "temporal_only" (whole-GPU lanes only, Nexus-style packing), "self_tuning" (a feedback
// baseline: make_plan gives its starting plan, re-planning steps it; self_tuning.h).
#pragma once

#include <string>
#include <vector>

#include "gpulanes/core/time.h"
#include "gpulanes/predict/share_profile.h"

namespace gpulanes {

struct PlannerModel {
  std::string name;
  double rate = 0;                          // mean requests per second
  DurationNs slo = from_ms(100);
  int max_batch_size = 32;
  const ShareProfile* profile = nullptr;  // latency and L2/DRAM use by (batch, share)
  double dispersion = -1;                   // variance / mean of its arrivals per SLO-long
                                            // window (Poisson 1; 0: plan for the mean rate);
                                            // < 0: unknown (PlannerConfig::assumed_dispersion)
  double peak_rate = 0;                     // measured 99th percentile of the count per window,
                                            // per second: slow bursts (minutes of flash crowd)
                                            // that dispersion, from successive windows, misses;
                                            // 0: none measured
};

struct PlannerConfig {
  std::string variant = "spatiotemporal";  // spatiotemporal, no_interference, temporal_only,
                                           // self_tuning
  int gpus = 1;                            // GPUs available
  int sms_per_gpu = 132;
  int granularity = 8;                     // lane sizes are multiples of this (and the whole GPU)
  int split_sms = 0;                       // SMs the lanes splitting one GPU may hold in all
                                           // (green contexts: whole groups of one split, fewer
                                           // than sms_per_gpu); 0: sms_per_gpu
  double memory_gb = 80;
  double safety = 1.1;                     // latency margin, as gpu-let
  int max_models_per_lane = 3;
  double assumed_dispersion = 4;           // traffic of unknown shape is planned as bursty
                                           // (4: about Gamma CV 2), not as Poisson
  bool spread = true;                      // grow a plan into the budget's idle GPUs
  double max_headroom = 4;                 // ...up to this multiple of the burst rates
  std::vector<double> interference = {0.113, 0.716, 0.355, 0.088, 0.895};  // gpu-let's c0..c4
};

struct PlannedModel {
  int model = -1;               // index into the planner's input
  int batch = 1;                // batch cap on this lane
  double rate = 0;              // requests/s this lane takes of the model
  DurationNs latency_ns = 0;    // predicted batch latency on this lane, interference included
};

struct PlannedLane {
  int gpu = 0;
  int sms = 0;
  DurationNs duty_ns = 0;       // one round of its models' batches
  std::vector<PlannedModel> models;
};

struct Plan {
  std::string variant;
  int gpus_used = 0;
  int gpus_needed = 0;                // GPUs the burst rates need, before spreading
  double headroom = 1;                // the burst rates were planned at this multiple
  std::vector<double> planned_rate;   // by model: requests/s its lanes were sized for
  bool feasible = true;               // every model's rate placed
  std::vector<double> unplaced_rate;  // by model: requests/s no GPU was left for
  std::vector<PlannedLane> lanes;
};

// Throws Error(kInvalidInput) for an unknown variant or the first option outside its range.
void validate(const PlannerConfig& config);

// Whether a lane of `sms` SMs fits beside lanes holding `used` SMs of one GPU: a whole-GPU lane
// (sms_per_gpu) only alone, lanes that split it only within split_sms in all.
bool lane_fits(const PlannerConfig& config, int used, int sms);

// Each model is planned for the 99th-percentile burst of its traffic within one SLO
// (burst_rate(), from its dispersion, or the measured peak_rate when higher), not for its mean
// rate. With `spread` and GPUs of the
// budget left idle, every burst rate is then scaled up by the largest headroom (to max_headroom)
// whose plan still fits the budget: idle GPUs absorb bursts instead of doing nothing.
// When the GPUs cannot serve every rate, the plan shares them max-min fairly in GPU time per
// second: models needing less than the fair share keep their rate, the others are cut to it
// (feasible false; unplaced_rate says how much of each mean rate is left out).
// Throws Error(kInvalidInput) for an unknown variant or a model without a profile.
Plan make_plan(const std::vector<PlannerModel>& models, const PlannerConfig& config);

// Every lane's models meet their SLO at the plan's batches under the interference their
// co-runners predict (what make_plan guarantees; tests use it).
bool plan_meets_slos(const Plan& plan, const std::vector<PlannerModel>& models,
                     const PlannerConfig& config);

}  // namespace gpulanes
