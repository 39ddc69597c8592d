// Shared declarations of the binding layer, which is split by topic: errors.cpp (typed errors),
// runtime.cpp (Runtime), outcomes.cpp (inputs in, outcomes out to futures), sim.cpp
// (Simulator), stats.cpp and plan.cpp (conversions
// both use), module.cpp (the _C module).
#pragma once

#include <pybind11/pybind11.h>

#include <memory>
#include <string>
#include <vector>

#include "gpulanes/core/error.h"
#include "gpulanes/metrics/lane_metrics.h"
#include "gpulanes/metrics/model_metrics.h"
#include "gpulanes/metrics/trace.h"
#include "gpulanes/plan/replanner.h"
#include "gpulanes/sched/batch_policy.h"
#include "gpulanes/plan/arrival_shape.h"
#include "gpulanes/sim/plan_check.h"
#include "gpulanes/predict/share_profile.h"

namespace gpulanes {
class Runtime;
}

namespace gpulanes::bindings {

namespace py = pybind11;

// The Python exception class for `code`, from gpulanes.errors (cached for the process lifetime).
py::handle error_type(ErrorCode code);
// An instance of that class carrying `message`.
py::object make_error(ErrorCode code, const std::string& message);

// Percentiles of `h` in milliseconds (count, mean, p50, p90, p99, p999, max).
py::dict summary_ms(const LogHistogram& h);
py::dict stats_dict(const ModelStats& s);
py::dict lane_stats_dict(const LaneStats& s);
// The trace as columns (lists), cheap to turn into a DataFrame.
py::dict trace_columns(const std::vector<TraceRecord>& records);
// The policy knobs from Python's `policy_options` (already validated and renamed there).
PolicyConfig policy_config_from(const py::dict& options);
// {"kind": ..., "alpha", "forgetting", "delta", "lr", "weights", "record"} (validated in Python).
PredictorConfig predictor_config_from(const py::dict& options);
// Every finished batch the predictor recorded, as numpy columns (features as n x k arrays).
py::dict prediction_columns(const std::vector<PredictionRecord>& records);

// Planning (plan.cpp). A model's profile by SM share: {"shares": [{"share", "batch_sizes",
// "p50_us", "l2", "dram"}], "memory_mb"}.
ShareProfile profile_from(const py::dict& d);
// The PlannerConfig fields by name ("interference" optional).
PlannerConfig planner_config_from(const py::dict& c);
// {"every_s", "alpha", "min_rate", "drift", "check_s", "admission", "planner", "initial_rates"?}.
ReplanOptions replan_options_from(const py::dict& r);
py::dict replan_event_dict(const ReplanEvent& e);
// A plan as a JSON-able dict, models by name, and back (names: the models in index order).
py::dict plan_dict(const Plan& plan, const std::vector<PlannerModel>& models);
// A plan's simulation: passed, min_attainment, attainment by model.
py::dict check_dict(const PlanCheck& c, const std::vector<PlannerModel>& models);
// {model: {rate, cv, dispersion, peak_rate, window_ms, windows}}; cv/dispersion None if unknown.
py::dict traffic_dict(const std::vector<TrafficShape>& shapes, const std::vector<std::string>& names);
Plan plan_from(const py::dict& d, const std::vector<std::string>& names);

// The core of a _C.Runtime (a TypeError for anything else), for bindings that hold it.
std::shared_ptr<Runtime> runtime_core(const py::handle& runtime);

// A serving Runtime's planning calls with models by name (plan.cpp); Runtime.planning() returns
// one, kept alive with its runtime. Models are fixed once the runtime has started.
class RuntimePlanning {
 public:
  explicit RuntimePlanning(Runtime& core);
  py::dict measured_rates() const;
  py::dict planner_config() const;
  // rates: by model index; config: planner_config()'s fields.
  py::dict plan(const std::vector<double>& rates, const py::dict& config,
                const std::vector<double>& dispersion, bool check) const;
  py::dict traffic() const;
  bool apply_plan(const py::dict& plan, const std::vector<double>& rates, bool admission,
                  double admit_fraction);
  void set_planner_profile(const std::string& model, const py::dict& profile);
  py::list replans() const;
  py::dict admission_limits() const;

 private:
  Runtime& core_;
  std::vector<std::string> names_;  // registered models, in index order
};

void init_plan(py::module_& m);
void init_errors(py::module_& m);
void init_runtime(py::module_& m);
void init_sim(py::module_& m);
void init_predict(py::module_& m);
void init_devices(py::module_& m);
// _C.GrpcFrontend when gpulanes was built with grpc++ (HAS_GRPC_FRONTEND says whether).
void init_grpc(py::module_& m);

}  // namespace gpulanes::bindings
