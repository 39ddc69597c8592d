// Simulator binding: builds a Simulator from plain Python structures (gpulanes/sim.py prepares
// them from profile files and layouts) and runs numpy arrival arrays without the GIL.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <chrono>

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

SimModelProfile profile_from(const py::dict& d) {
  std::vector<SharePoints> shares;
  for (py::handle h : d["shares"].cast<py::list>()) {
    auto s = h.cast<py::dict>();
    SharePoints sp;
    sp.share = s["share"].cast<double>();
    const auto sizes = s["batch_sizes"].cast<std::vector<int>>();
    const auto p50 = s["p50_us"].cast<std::vector<double>>();
    const auto l2 = s["l2"].cast<std::vector<double>>();
    const auto dram = s["dram"].cast<std::vector<double>>();
    if (p50.size() != sizes.size() || l2.size() != sizes.size() || dram.size() != sizes.size()) {
      throw Error(ErrorCode::kInvalidInput, "profile columns differ in length");
    }
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      LatencyPoint p;
      p.batch_size = sizes[i];
      p.p50_us = p.mean_us = p.p99_us = p50[i];
      sp.points.push_back(p);
      sp.l2[sizes[i]] = l2[i];
      sp.dram[sizes[i]] = dram[i];
    }
    shares.push_back(std::move(sp));
  }
  return SimModelProfile(std::move(shares), d["memory_mb"].cast<double>());
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
  for (const ReplanEvent& e : r.replans) {
    py::dict ev;
    ev["t_s"] = e.t_s;
    ev["drift"] = e.drift;
    ev["gpus_used"] = e.gpus_used;
    ev["feasible"] = e.feasible;
    ev["changed"] = e.changed;
    ev["applied_t_s"] = e.applied_t_s;
    ev["plan_wall_us"] = e.plan_wall_us;
    ev["lanes"] = e.lanes;
    replans.append(ev);
  }
  py::dict d;
  d["replans"] = replans;
  d["models"] = models;
  d["arrivals"] = r.arrivals;
  d["steps"] = r.steps;
  d["simulated_s"] = r.simulated_s;
  d["wall_s"] = wall_s;
  return d;
}

PlannerConfig planner_config_from(const py::dict& c) {
  PlannerConfig cfg;
  cfg.variant = c["variant"].cast<std::string>();
  cfg.gpus = c["gpus"].cast<int>();
  cfg.sms_per_gpu = c["sms_per_gpu"].cast<int>();
  cfg.granularity = c["granularity"].cast<int>();
  cfg.memory_gb = c["memory_gb"].cast<double>();
  if (c.contains("interference")) cfg.interference = c["interference"].cast<std::vector<double>>();
  return cfg;
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
      auto r = c["replan"].cast<py::dict>();
      o.replan.every_s = r["every_s"].cast<double>();
      o.replan.alpha = r["alpha"].cast<double>();
      o.replan.min_rate = r["min_rate"].cast<double>();
      o.replan.drift = r["drift"].cast<double>();
      o.replan.check_s = r["check_s"].cast<double>();
      o.replan.initial_rates = r["initial_rates"].cast<std::vector<double>>();
      o.replan.planner = planner_config_from(r["planner"].cast<py::dict>());
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
    return result_dict(r, wall_s);
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

  py::dict trace() const { return trace_columns(sim_->runtime().trace()); }
  py::dict predictions() const { return prediction_columns(sim_->runtime().predictor()->records()); }
  std::vector<double> predictor_weights() const { return sim_->runtime().predictor()->weights(); }

 private:
  std::unique_ptr<Simulator> sim_;
};

py::dict plan_dict(const Plan& plan, const std::vector<PlannerModel>& models) {
  py::list lanes;
  for (const PlannedLane& l : plan.lanes) {
    py::list ms;
    for (const PlannedModel& pm : l.models) {
      py::dict d;
      d["model"] = models[pm.model].name;
      d["batch"] = pm.batch;
      d["rate"] = pm.rate;
      d["latency_ms"] = pm.latency_ns / 1e6;
      ms.append(d);
    }
    py::dict d;
    d["gpu"] = l.gpu;
    d["sms"] = l.sms;
    d["duty_ms"] = l.duty_ns / 1e6;
    d["models"] = ms;
    lanes.append(d);
  }
  py::dict unplaced;
  for (std::size_t i = 0; i < models.size(); ++i) {
    if (plan.unplaced_rate[i] > 0) unplaced[py::str(models[i].name)] = plan.unplaced_rate[i];
  }
  py::dict d;
  d["variant"] = plan.variant;
  d["gpus_used"] = plan.gpus_used;
  d["feasible"] = plan.feasible;
  d["unplaced_rate"] = unplaced;
  d["lanes"] = lanes;
  return d;
}

// models: [{"name", "rate", "slo_ns", "max_batch_size", "shares", "memory_mb"}], config: the
// PlannerConfig fields by name.
py::dict make_plan_py(const py::list& models_in, const py::dict& c) {
  std::vector<SimModelProfile> profiles;
  for (py::handle h : models_in) profiles.push_back(profile_from(h.cast<py::dict>()));
  std::vector<PlannerModel> models;
  std::size_t i = 0;
  for (py::handle h : models_in) {
    auto d = h.cast<py::dict>();
    models.push_back({d["name"].cast<std::string>(), d["rate"].cast<double>(),
                      d["slo_ns"].cast<std::int64_t>(), d["max_batch_size"].cast<int>(),
                      &profiles[i++]});
  }
  const PlannerConfig cfg = planner_config_from(c);
  Plan plan;
  {
    py::gil_scoped_release nogil;
    plan = make_plan(models, cfg);
  }
  py::dict d = plan_dict(plan, models);
  PlannerConfig judge = cfg;
  d["meets_slos"] = plan_meets_slos(plan, models, judge);
  return d;
}

}  // namespace

void init_sim(py::module_& m) {
  m.def("make_plan", &make_plan_py, py::arg("models"), py::arg("config"));
  py::class_<PySimulator>(m, "Simulator")
      .def(py::init<const py::dict&>(), py::arg("config"))
      .def("run", &PySimulator::run, py::arg("times_s"), py::arg("models"), py::arg("warmup_s"),
           py::arg("deadline_ns"))
      .def("stats", &PySimulator::stats)
      .def("lane_stats", &PySimulator::lane_stats)
      .def("trace", &PySimulator::trace)
      .def("predictions", &PySimulator::predictions)
      .def("predictor_weights", &PySimulator::predictor_weights);
  m.attr("SIM_ORIGIN_NS") = Simulator::kOrigin;
}

}  // namespace gpulanes::bindings
