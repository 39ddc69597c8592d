// Conversions for planning that the runtime and simulator bindings share: profiles by SM share,
// planner and re-planning options, plans and re-plan events, as plain Python structures.
#include <pybind11/stl.h>

#include "bindings.h"
#include "gpulanes/core/serving_thread.h"
#include "gpulanes/runtime/runtime.h"

namespace gpulanes::bindings {

ShareProfile profile_from(const py::dict& d) {
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
  return ShareProfile(std::move(shares), d["memory_mb"].cast<double>());
}

PlannerConfig planner_config_from(const py::dict& c) {
  PlannerConfig cfg;
  cfg.variant = c["variant"].cast<std::string>();
  cfg.gpus = c["gpus"].cast<int>();
  cfg.sms_per_gpu = c["sms_per_gpu"].cast<int>();
  cfg.granularity = c["granularity"].cast<int>();
  if (c.contains("split_sms")) cfg.split_sms = c["split_sms"].cast<int>();
  cfg.memory_gb = c["memory_gb"].cast<double>();
  if (c.contains("interference")) cfg.interference = c["interference"].cast<std::vector<double>>();
  if (c.contains("assumed_dispersion")) cfg.assumed_dispersion = c["assumed_dispersion"].cast<double>();
  if (c.contains("spread")) cfg.spread = c["spread"].cast<bool>();
  if (c.contains("max_headroom")) cfg.max_headroom = c["max_headroom"].cast<double>();
  return cfg;
}

ReplanOptions replan_options_from(const py::dict& r) {
  ReplanOptions o;
  o.every_s = r["every_s"].cast<double>();
  o.alpha = r["alpha"].cast<double>();
  o.min_rate = r["min_rate"].cast<double>();
  o.drift = r["drift"].cast<double>();
  o.check_s = r["check_s"].cast<double>();
  o.admission = r["admission"].cast<bool>();
  o.admit_fraction = r["admit_fraction"].cast<double>();
  if (r.contains("initial_rates")) o.initial_rates = r["initial_rates"].cast<std::vector<double>>();
  o.planner = planner_config_from(r["planner"].cast<py::dict>());
  return o;
}

py::dict replan_event_dict(const ReplanEvent& e) {
  py::dict ev;
  ev["t_s"] = e.t_s;
  ev["drift"] = e.drift;
  ev["gpus_used"] = e.gpus_used;
  ev["feasible"] = e.feasible;
  ev["changed"] = e.changed;
  ev["applied_t_s"] = e.applied_t_s;
  ev["plan_wall_us"] = e.plan_wall_us;
  ev["apply_wall_ms"] = e.apply_wall_ms;
  ev["lanes"] = e.lanes;
  ev["rates"] = e.rates;
  ev["dispersion"] = e.dispersion;
  ev["gpus_needed"] = e.gpus_needed;
  ev["simulated_attainment"] = e.simulated_attainment;
  ev["why"] = e.why;
  return ev;
}

py::dict plan_dict(const Plan& plan, const std::vector<PlannerModel>& models) {
  py::list lanes;
  for (const PlannedLane& l : plan.lanes) {
    py::list ms;
    for (const PlannedModel& pm : l.models) {
      if (models[pm.model].name.empty()) continue;  // unregistered: never placed anything
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
  double placed = 0, left = 0;
  for (const PlannedLane& l : plan.lanes) {
    for (const PlannedModel& pm : l.models) placed += pm.rate;
  }
  for (std::size_t i = 0; i < models.size(); ++i) {
    if (plan.unplaced_rate[i] > 0 && !models[i].name.empty()) unplaced[py::str(models[i].name)] = plan.unplaced_rate[i];
    left += plan.unplaced_rate[i];
  }
  py::dict d;
  d["variant"] = plan.variant;
  d["gpus_used"] = plan.gpus_used;
  d["feasible"] = plan.feasible;
  d["unplaced_rate"] = unplaced;
  // The share of the offered requests the plan places on lanes that meet their SLOs as
  // predicted (admission control sheds the rest).
  d["predicted_attainment"] = placed + left > 0 ? placed / (placed + left) : 1.0;
  d["lanes"] = lanes;
  d["gpus_needed"] = plan.gpus_needed;
  d["headroom"] = plan.headroom;
  py::dict planned;
  for (std::size_t i = 0; i < models.size() && i < plan.planned_rate.size(); ++i) {
    if (!models[i].name.empty()) planned[py::str(models[i].name)] = plan.planned_rate[i];
  }
  d["planned_rate"] = planned;
  return d;
}

py::dict check_dict(const PlanCheck& c, const std::vector<PlannerModel>& models) {
  py::dict per;
  for (std::size_t i = 0; i < models.size(); ++i) {
    if (!models[i].name.empty()) per[py::str(models[i].name)] = c.attainment[i];
  }
  py::dict d;
  d["passed"] = c.passed;
  d["min_attainment"] = c.min_attainment;
  d["attainment"] = per;
  return d;
}

py::dict traffic_dict(const std::vector<TrafficShape>& shapes, const std::vector<std::string>& names) {
  py::dict out;
  for (std::size_t m = 0; m < names.size() && m < shapes.size(); ++m) {
    if (names[m].empty()) continue;
    const TrafficShape& t = shapes[m];
    py::dict d;
    d["rate"] = t.rate;
    d["cv"] = t.cv >= 0 ? py::cast(t.cv) : py::none();
    d["dispersion"] = t.dispersion >= 0 ? py::cast(t.dispersion) : py::none();
    d["peak_rate"] = t.peak_rate;
    d["window_ms"] = t.window_ns / 1e6;
    d["windows"] = t.windows;
    out[py::str(names[m])] = d;
  }
  return out;
}

Plan plan_from(const py::dict& d, const std::vector<std::string>& names) {
  auto index = [&](const std::string& name) {
    const auto it = name.empty() ? names.end() : std::find(names.begin(), names.end(), name);
    if (it == names.end()) throw Error(ErrorCode::kUnknownModel, "the plan names an unknown model '" + name + "'");
    return static_cast<int>(it - names.begin());
  };
  Plan plan;
  plan.variant = d["variant"].cast<std::string>();
  plan.gpus_used = d["gpus_used"].cast<int>();
  plan.feasible = d["feasible"].cast<bool>();
  plan.unplaced_rate.assign(names.size(), 0.0);
  for (auto kv : d["unplaced_rate"].cast<py::dict>()) {
    plan.unplaced_rate[index(kv.first.cast<std::string>())] = kv.second.cast<double>();
  }
  for (py::handle h : d["lanes"].cast<py::list>()) {
    auto l = h.cast<py::dict>();
    PlannedLane lane;
    lane.gpu = l["gpu"].cast<int>();
    lane.sms = l["sms"].cast<int>();
    lane.duty_ns = static_cast<DurationNs>(l["duty_ms"].cast<double>() * 1e6);
    for (py::handle mh : l["models"].cast<py::list>()) {
      auto m = mh.cast<py::dict>();
      lane.models.push_back({index(m["model"].cast<std::string>()), m["batch"].cast<int>(),
                             m["rate"].cast<double>(),
                             static_cast<DurationNs>(m["latency_ms"].cast<double>() * 1e6)});
    }
    plan.lanes.push_back(std::move(lane));
  }
  return plan;
}

RuntimePlanning::RuntimePlanning(Runtime& core) : core_(core) {
  // By model index; "" for an unregistered model, which Python neither sees nor names.
  names_ = core_.model_names(/*unregistered=*/false);
}

py::dict RuntimePlanning::measured_rates() const {
  const auto rates = core_.measured_rates();
  py::dict d;
  for (std::size_t m = 0; m < names_.size(); ++m) {
    if (!names_[m].empty()) d[py::str(names_[m])] = rates[m];
  }
  return d;
}

py::dict RuntimePlanning::planner_config() const {
  const PlannerConfig c = core_.planner_config();
  py::dict d;
  d["variant"] = c.variant;
  d["gpus"] = c.gpus;
  d["sms_per_gpu"] = c.sms_per_gpu;
  d["granularity"] = c.granularity;
  d["split_sms"] = c.split_sms;
  d["memory_gb"] = c.memory_gb;
  d["interference"] = c.interference;
  d["assumed_dispersion"] = c.assumed_dispersion;
  d["spread"] = c.spread;
  d["max_headroom"] = c.max_headroom;
  return d;
}

py::dict RuntimePlanning::plan(const std::vector<double>& rates, const py::dict& config,
                               const std::vector<double>& dispersion, bool check) const {
  const PlannerConfig cfg = planner_config_from(config);
  Runtime::PlanOutcome out;
  {
    py::gil_scoped_release nogil;
    out = core_.plan(rates, cfg, dispersion, check);
  }
  std::vector<PlannerModel> named;
  for (const auto& n : names_) named.push_back({n});
  py::dict d = plan_dict(out.plan, named);
  d["meets_slos"] = out.meets_slos;
  if (out.check.ran) d["simulated"] = check_dict(out.check, named);
  d["why"] = out.why;
  return d;
}

py::dict RuntimePlanning::traffic() const {
  return traffic_dict(core_.traffic(), names_);
}

bool RuntimePlanning::apply_plan(const py::dict& plan, const std::vector<double>& rates,
                                 bool admission, double admit_fraction) {
  if (serving_runtime() == &core_) {
    throw Error(ErrorCode::kInvalidInput,
                "apply_plan() cannot be called from a done-callback of this runtime: it waits "
                "for the runtime's own threads, one of which runs the callback");
  }
  const Plan p = plan_from(plan, names_);
  py::gil_scoped_release nogil;  // new lanes load and warm up their models
  return core_.apply_plan(p, rates, admission, admit_fraction);
}

void RuntimePlanning::set_planner_profile(const std::string& model, const py::dict& profile) {
  core_.set_planner_profile(model, profile_from(profile));
}

py::list RuntimePlanning::replans() const {
  py::list out;
  for (const ReplanEvent& e : core_.replans()) out.append(replan_event_dict(e));
  return out;
}

py::dict RuntimePlanning::admission_limits() const {
  py::dict d;
  for (std::size_t m = 0; m < names_.size(); ++m) {
    const double l = core_.admission_limit(static_cast<int>(m));
    if (l >= 0 && !names_[m].empty()) d[py::str(names_[m])] = l;
  }
  return d;
}

void init_plan(py::module_& m) {
  py::class_<RuntimePlanning>(m, "RuntimePlanning")
      .def("measured_rates", &RuntimePlanning::measured_rates)
      .def("planner_config", &RuntimePlanning::planner_config)
      .def("plan", &RuntimePlanning::plan, py::arg("rates"), py::arg("config"),
           py::arg("dispersion"), py::arg("check"))
      .def("traffic", &RuntimePlanning::traffic)
      .def("apply_plan", &RuntimePlanning::apply_plan, py::arg("plan"), py::arg("rates"),
           py::arg("admission"), py::arg("admit_fraction"))
      .def("set_planner_profile", &RuntimePlanning::set_planner_profile, py::arg("model"),
           py::arg("profile"))
      .def("replans", &RuntimePlanning::replans)
      .def("admission_limits", &RuntimePlanning::admission_limits);
}

}  // namespace gpulanes::bindings
