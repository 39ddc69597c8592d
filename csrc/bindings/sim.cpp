// Simulator binding: builds a Simulator from plain Python structures (gpulanes/sim.py prepares
// them from profile files and layouts) and runs numpy arrival arrays without the GIL.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <chrono>
#include <optional>

#include "bindings.h"
#include "gpulanes/plan/planner.h"
#include "gpulanes/sim/simulator.h"

namespace gpulanes::bindings {
namespace {

std::shared_ptr<InterferenceModel> interference_from(const py::dict& d) {
  const auto kind = d["kind"].cast<std::string>();
  if (kind == "none") return make_no_interference();
  if (kind == "linear") return make_linear_interference(d["coefficients"].cast<std::vector<double>>());
  if (kind == "nonlinear") {
    return make_nonlinear_interference(d["alpha"].cast<double>(), d["beta"].cast<double>(),
                                       d["capacity"].cast<double>());
  }
  if (kind == "drift") {
    return make_drifting_interference(interference_from(d["base"].cast<py::dict>()),
                                      from_ms(d["start_s"].cast<double>() * 1e3),
                                      from_ms(d["ramp_s"].cast<double>() * 1e3),
                                      d["scale"].cast<double>());
  }
  throw Error(ErrorCode::kInvalidInput, "unknown interference kind '" + kind + "'");
}

py::dict result_dict(const SimRunResult& r, double wall_s) {
  py::list models;
  for (const SimModelResult& m : r.models) {
    py::dict d;
    d["requests"] = m.requests;
    d["met"] = m.met;
    d["late"] = m.late;
    d["dropped"] = m.dropped;
    d["rejected"] = m.rejected;
    d["failed"] = m.failed;
    d["p50_ms"] = m.p50_ms;
    d["p99_ms"] = m.p99_ms;
    d["mean_ms"] = m.mean_ms;
    models.append(d);
  }
  py::list replans;
  for (const ReplanEvent& e : r.replans) replans.append(replan_event_dict(e));
  py::dict d;
  d["replans"] = replans;
  d["models"] = models;
  d["arrivals"] = r.arrivals;
  d["steps"] = r.steps;
  d["simulated_s"] = r.simulated_s;
  d["wall_s"] = wall_s;
  return d;
}

class PySimulator {
 public:
  explicit PySimulator(const py::dict& c) {
    SimulatorOptions o;
    o.policy = c["policy"].cast<std::string>();
    o.policy_config = policy_config_from(c["policy_options"].cast<py::dict>());
    o.trace = c["trace"].cast<bool>();
    for (py::handle h : c["gpus"].cast<py::list>()) {
      auto g = h.cast<py::dict>();
      o.gpus.push_back({g["sms"].cast<int>(), g["memory_gb"].cast<double>()});
    }
    for (py::handle h : c["lanes"].cast<py::list>()) {
      auto l = h.cast<py::dict>();
      o.lanes.push_back({l["gpu"].cast<int>(), l["sms"].cast<int>(),
                         l["models"].cast<std::vector<int>>()});
    }
    o.interference = interference_from(c["interference"].cast<py::dict>());
    o.noise_cv = c["noise_cv"].cast<double>();
    o.seed = c["seed"].cast<std::uint64_t>();
    o.predictor = predictor_config_from(c["predictor"].cast<py::dict>());
    if (c.contains("replan") && !c["replan"].is_none()) {
      o.replan = replan_options_from(c["replan"].cast<py::dict>());
    }
    std::vector<SimModelSpec> models;
    for (py::handle h : c["models"].cast<py::list>()) {
      auto m = h.cast<py::dict>();
      SimModelSpec s;
      s.name = m["name"].cast<std::string>();
      s.slo = m["slo_ns"].cast<std::int64_t>();
      s.max_batch_size = m["max_batch_size"].cast<int>();
      s.max_queue = m["max_queue"].cast<std::size_t>();
      s.profile = profile_from(m);
      models.push_back(std::move(s));
    }
    sim_ = std::make_unique<Simulator>(std::move(o), std::move(models));
  }

  py::dict run(py::array_t<double, py::array::c_style | py::array::forcecast> t,
               py::array_t<std::int32_t, py::array::c_style | py::array::forcecast> m,
               double warmup_s, const std::vector<std::int64_t>& deadline_ns) {
    if (t.ndim() != 1 || m.ndim() != 1 || t.shape(0) != m.shape(0)) {
      throw Error(ErrorCode::kInvalidInput, "times and models must be 1-d arrays of one length");
    }
    SimRunResult r;
    double wall_s;
    {
      py::gil_scoped_release nogil;
      const auto t0 = std::chrono::steady_clock::now();
      r = sim_->run(t.data(), m.data(), static_cast<std::size_t>(t.shape(0)), warmup_s,
                    std::vector<DurationNs>(deadline_ns.begin(), deadline_ns.end()));
      wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    py::dict out = result_dict(r, wall_s);
    std::vector<std::string> names;
    for (const ModelStats& st : sim_->runtime().stats()) names.push_back(st.name);
    out["traffic"] = traffic_dict(sim_->runtime().traffic(), names);
    return out;
  }

  py::list stats() const {
    py::list out;
    for (const auto& s : sim_->runtime().stats()) {
      py::dict d = stats_dict(s);
      d["name"] = s.name;
      out.append(d);
    }
    return out;
  }

  py::list lane_stats() const {
    const auto reports = sim_->cluster().lane_reports();
    py::list out;
    for (const auto& s : sim_->runtime().lane_stats()) {
      py::dict d = lane_stats_dict(s);
      const SimLaneReport& r = reports.at(s.index);
      d["gpu"] = r.gpu;
      d["sms"] = r.sms;
      d["sm_share"] = r.share;
      d["mean_slowdown"] = r.mean_slowdown;
      d["max_slowdown"] = r.max_slowdown;
      out.append(d);
    }
    return out;
  }

  // The layout serving at the end of the run (re-planning may have changed it).
  py::list layout() const {
    py::list out;
    for (const SimLaneSpec& l : sim_->cluster().layout()) {
      py::dict d;
      d["gpu"] = l.gpu;
      d["sms"] = l.sms;
      d["models"] = l.models;
      out.append(d);
    }
    return out;
  }

  py::dict trace() const { return trace_columns(sim_->runtime().trace()); }
  py::dict predictions() const { return prediction_columns(sim_->runtime().predictor()->records()); }
  std::vector<double> predictor_weights() const { return sim_->runtime().predictor()->weights(); }

 private:
  std::unique_ptr<Simulator> sim_;
};

// models: [{"name", "rate", "dispersion", "slo_ns", "max_batch_size", "shares", "memory_mb"}],
// config: the PlannerConfig fields by name.
// check_with: unset, no simulation; None or an interference dict, prove the plan in a simulation
// with that interference (None: the planner's linear coefficients).
py::dict make_plan_py(const py::list& models_in, const py::dict& c,
                      const std::optional<py::object>& check_with) {
  std::vector<ShareProfile> profiles;
  for (py::handle h : models_in) profiles.push_back(profile_from(h.cast<py::dict>()));
  std::vector<PlannerModel> models;
  std::size_t i = 0;
  for (py::handle h : models_in) {
    auto d = h.cast<py::dict>();
    models.push_back({d["name"].cast<std::string>(), d["rate"].cast<double>(),
                      d["slo_ns"].cast<std::int64_t>(), d["max_batch_size"].cast<int>(),
                      &profiles[i++], d["dispersion"].cast<double>(),
                      d.contains("peak_rate") ? d["peak_rate"].cast<double>() : 0.0});
  }
  const PlannerConfig cfg = planner_config_from(c);
  Plan plan;
  CheckedPlan checked;
  const bool check = check_with.has_value();
  PlanCheckOptions o;
  if (check && !check_with->is_none()) o.interference = interference_from(check_with->cast<py::dict>());
  {
    py::gil_scoped_release nogil;
    if (check && cfg.variant != "self_tuning") {
      checked = make_checked_plan(models, cfg, o);
      plan = checked.plan;
    } else {
      plan = make_plan(models, cfg);
    }
  }
  py::dict d = plan_dict(plan, models);
  d["meets_slos"] = plan_meets_slos(plan, models, cfg);
  if (checked.check.ran) d["simulated"] = check_dict(checked.check, models);
  d["why"] = checked.why;
  return d;
}

}  // namespace

void init_sim(py::module_& m) {
  m.def("make_plan", &make_plan_py, py::arg("models"), py::arg("config"),
        py::arg("check_with") = std::nullopt);
  m.def("validate_options", [](const std::string& policy, const py::dict& policy_options,
                               const py::dict& predictor) {
        make_policy(policy, policy_config_from(policy_options));
        validate(predictor_config_from(predictor));
      }, py::arg("policy"), py::arg("policy_options"), py::arg("predictor"),
      "Raises InvalidInput for a policy or predictor option out of range, as a Runtime would.");
  py::class_<PySimulator>(m, "Simulator")
      .def(py::init<const py::dict&>(), py::arg("config"))
      .def("run", &PySimulator::run, py::arg("times_s"), py::arg("models"), py::arg("warmup_s"),
           py::arg("deadline_ns"))
      .def("stats", &PySimulator::stats)
      .def("lane_stats", &PySimulator::lane_stats)
      .def("layout", &PySimulator::layout)
      .def("trace", &PySimulator::trace)
      .def("predictions", &PySimulator::predictions)
      .def("predictor_weights", &PySimulator::predictor_weights);
  m.attr("SIM_ORIGIN_NS") = Simulator::kOrigin;
}

}  // namespace gpulanes::bindings
