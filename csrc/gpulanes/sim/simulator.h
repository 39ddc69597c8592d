// The discrete-event simulator: a Runtime on a VirtualClock whose lanes are a SimCluster, fed
// by an arrival stream. Every scheduling decision is the runtime's own (same event loop, policy,
// admission control and metrics objects as on real lanes); the simulator only advances time:
// to the next arrival, the next batch end, or the next time the policy asked to be woken, and
// runs one decision round per instant. Single-threaded and deterministic for a given seed.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gpulanes/core/clock.h"
#include "gpulanes/plan/planner.h"
#include "gpulanes/plan/replanner.h"
#include "gpulanes/plan/self_tuning.h"
#include "gpulanes/runtime/runtime.h"
#include "gpulanes/sim/cluster.h"
#include "gpulanes/sim/plan_check.h"

namespace gpulanes {

struct SimModelSpec {
  std::string name;
  DurationNs slo = from_ms(100);
  int max_batch_size = 32;
  std::size_t max_queue = 1'000'000;
  ShareProfile profile;
};

struct SimulatorOptions {
  std::string policy = "deadline";
  PolicyConfig policy_config;
  bool trace = false;             // record every request (Runtime::trace())
  std::vector<SimGpuSpec> gpus;
  std::vector<SimLaneSpec> lanes;
  std::shared_ptr<InterferenceModel> interference;  // null: none
  double noise_cv = 0.0;
  std::uint64_t seed = 0;
  PredictorConfig predictor;      // the scheduler's latency predictor
  ReplanOptions replan;           // every_s 0: the layout stays as given
};

// Outcomes of the requests that arrived after the warm-up window, per model.
struct SimModelResult {
  std::uint64_t requests = 0, met = 0, late = 0, dropped = 0, rejected = 0, failed = 0;
  double p50_ms = 0, p99_ms = 0, mean_ms = 0;  // latency of completed requests (met + late)
};

struct SimRunResult {
  std::vector<SimModelResult> models;  // by model index
  std::uint64_t arrivals = 0;          // requests offered, warm-up included
  std::uint64_t steps = 0;             // instants the clock stopped at
  double simulated_s = 0;              // virtual time from start to the last outcome
  std::vector<ReplanEvent> replans;
};

class Simulator {
 public:
  static constexpr TimeNs kOrigin = 1'000'000'000;  // virtual time of arrival offset 0

  // Throws Error(kInvalidInput) for a bad layout or model (see SimCluster).
  Simulator(SimulatorOptions options, std::vector<SimModelSpec> models);
  ~Simulator();

  // Offers `n` requests: request i of model `model[i]` arrives `t_s[i]` seconds after the start
  // (sorted ascending); its deadline is `deadline_ns[model]` after arrival when that is > 0,
  // else the model's SLO. Runs until every request has its outcome. Requests that arrive before
  // `warmup_s` are served but left out of the result. Callable once.
  SimRunResult run(const double* t_s, const std::int32_t* model, std::size_t n, double warmup_s,
                   const std::vector<DurationNs>& deadline_ns);

  Runtime& runtime() { return *runtime_; }
  const SimCluster& cluster() const { return *cluster_; }

 private:
  struct Recorder {
    SimModelResult counts;
    std::vector<float> latency_ms;
  };
  void on_finished(const Request& r, TraceOutcome outcome, TimeNs end);
  // Plans for `rates` (self_tuning: steps from the current layout by what its lanes did since
  // the last re-plan); returns the layout, fills `event` and sets the admission limits.
  std::vector<SimLaneSpec> replan(const std::vector<double>& rates, ReplanEvent* event);

  std::shared_ptr<VirtualClock> clock_;
  std::shared_ptr<SimCluster> cluster_;
  std::unique_ptr<Runtime> runtime_;
  std::vector<Recorder> recorders_;  // by model
  std::vector<SimModelSpec> models_; // specs and profiles, for the planner
  ReplanOptions replan_;
  std::shared_ptr<InterferenceModel> interference_;  // the cluster's: plans are checked with it
  TimeNs warmup_end_ = 0;            // absolute; arrivals before it are not recorded
  FeedbackMeter feedback_;           // self_tuning: what lanes did between re-plans
  bool ran_ = false;
};

}  // namespace gpulanes
