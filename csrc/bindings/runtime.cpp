// Runtime binding: argument conversion and GIL handling (outcomes.h resolves futures). Rules:
// - every blocking or non-trivial core call runs with the GIL released;
// - an accepted request's PendingSink owns one strong reference to its sink (a
//   concurrent.futures.Future or an asyncio adapter), taken under the GIL at submit and
//   released under the GIL when it is resolved;
// - completions run through the delivery hook on the core's delivery thread, which takes the
//   GIL once for all outcomes pending then, with no core lock held: the GIL and core locks
//   never nest the other way.
#include <pybind11/stl.h>
#include <torch/extension.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <utility>

#include <unistd.h>

#include "background.h"
#include "bindings.h"
#include "completion_queue.h"
#include "outcomes.h"
#include "waiting.h"
#include "gpulanes/core/error_text.h"
#include "gpulanes/core/serving_thread.h"
#include "gpulanes/core/string_tensor.h"
#include "gpulanes/exec/green_context.h"
#include "gpulanes/metrics/prometheus.h"
#include "gpulanes/model/aoti_package.h"
#include "gpulanes/model/torchscript.h"
#include "gpulanes/runtime/runtime.h"

namespace gpulanes::bindings {
namespace {

// Owns the core runtime; makes sure it is destroyed (threads joined) without the GIL.
class PyRuntime {
 public:
  PyRuntime(std::string device, std::string policy, const py::dict& policy_options, int cpu_lanes,
            bool outputs_on_device, int warmup_rounds, double spin_us, int profile_reps,
            bool trace, const py::dict& predictor, std::string partitioning,
            const py::object& replan, const py::dict& isolation, std::string layout_changes)
      : spin_ns_(from_us(spin_us)) {
    RuntimeOptions o;
    o.layout_changes = std::move(layout_changes);
    o.isolation = isolation["mode"].cast<std::string>();
    o.worker_path = isolation["worker_path"].cast<std::string>();
    o.worker_watchdog_s = isolation["watchdog_s"].cast<double>();
    o.worker_start_timeout_s = isolation["start_timeout_s"].cast<double>();
    o.worker_max_restarts = isolation["max_restarts"].cast<int>();
    o.worker_libraries = isolation["libraries"].cast<std::vector<std::string>>();
    o.worker_spin_us = isolation["spin_us"].cast<double>();
    o.worker_retry_after_s = isolation["retry_after_s"].cast<double>();
    if (!replan.is_none()) o.replan = replan_options_from(replan.cast<py::dict>());
    o.predictor = predictor_config_from(predictor);
    o.trace = trace;
    o.spin_us = spin_us;
    o.profile_reps = profile_reps;
    o.policy_config = policy_config_from(policy_options);
    o.device = std::move(device);
    o.policy = std::move(policy);
    o.cpu_lanes = cpu_lanes;
    o.outputs_on_device = outputs_on_device;
    o.warmup_rounds = warmup_rounds;
    o.partitioning = std::move(partitioning);
    core_ = std::make_shared<Runtime>(std::move(o));
    core_->set_delivery_hook([](const std::function<void()>& deliver) {
      if (!Py_IsInitialized()) return;  // interpreter gone: no future left to resolve
      {
        py::gil_scoped_acquire gil;
        // Keep this core thread's Python thread state for its later deliveries: creating and
        // destroying one per batch costs more than the rest of the delivery.
        thread_local bool keep_state = false;
        if (!keep_state) {
          gil.inc_ref();
          keep_state = true;
        }
        deliver();
      }
      publish_resolved();
    });
  }

  ~PyRuntime() {
    if (forked()) {
      // Its threads live in the parent only: destroying it here would join threads that do not
      // exist. Leaked on purpose; the child's exit reclaims the memory.
      new std::shared_ptr<Runtime>(std::move(core_));
      return;
    }
    py::gil_scoped_release nogil;
    if (on_own_thread()) {
      // The last reference died in a done-callback: destroy it where it may join this thread.
      run_in_background([core = std::move(core_)]() mutable { core.reset(); });
      return;
    }
    core_.reset();
  }

  // A request's inputs as tensors; anything else is counted as a refused request of `model`
  // and raised.
  std::vector<at::Tensor> request_tensors(const std::string& model, const py::sequence& inputs) {
    try {
      return inputs_from(inputs, "input");
    } catch (const Error& e) {
      core_->refuse(model, e.code(), e.what());
    }
  }

  // Refuses calls in a child of fork(): the runtime's threads did not come along.
  void check_process(const char* what) const {
    if (forked()) {
      throw Error(ErrorCode::kRuntimeClosed,
                  std::string(what) + ": this Runtime was started in process " +
                      std::to_string(pid_) + " and this is a forked child (" +
                      std::to_string(getpid()) + "), which has none of its threads; create a "
                      "new Runtime in the child");
    }
  }

  // Refuses a call that would wait for this runtime's own threads when made on one of them
  // (in a done-callback, which runs on a lane or the event loop).
  void check_not_own_thread(const char* what) const {
    if (on_own_thread()) {
      throw Error(ErrorCode::kInvalidInput,
                  std::string(what) + " cannot be called from a done-callback of this runtime: "
                  "callbacks run on the runtime's own threads, which it would wait for. Submit "
                  "and chain a callback instead, or call it from another thread");
    }
  }

  bool forked() const { return getpid() != pid_; }
  bool on_own_thread() const { return serving_runtime() == core_.get(); }
  std::uintptr_t core_id() const { return reinterpret_cast<std::uintptr_t>(core_.get()); }

  int register_model(const std::string& name, const std::string& kind, const std::string& source,
                     const py::sequence& example_inputs, std::int64_t slo_ns, int max_batch_size,
                     std::int64_t max_queue) {
    if (core_->running()) check_not_own_thread("register()");  // it waits for new lanes
    std::vector<at::Tensor> examples = inputs_from(example_inputs, "example input");
    ModelSpec spec;
    spec.name = name;
    spec.slo = slo_ns;
    // 0: no batch dimension (Triton's max_batch_size 0): the examples are whole inputs
    spec.batched = max_batch_size != 0;
    spec.max_batch_size = spec.batched ? max_batch_size : 1;
    spec.max_queue = max_queue > 0 ? static_cast<std::size_t>(max_queue) : 0;
    std::vector<at::Tensor> samples;
    for (std::size_t i = 0; i < examples.size(); ++i) {
      const at::Tensor& t = examples[i];
      if (is_string_tensor(t)) {  // a list of strings: a batch of them, or the whole input
        spec.inputs.push_back({spec.batched ? std::vector<std::int64_t>{}
                                            : std::vector<std::int64_t>{-1},
                               kStringDtype});
        const std::string which = "example input " + std::to_string(i) + " of model '" + name + "'";
        if (spec.batched && count_strings(t, which) < 1) {
          throw Error(ErrorCode::kInvalidInput, which + " needs at least one string");
        }
        samples.push_back(spec.batched ? slice_strings(t, 0, 1) : t);
        continue;
      }
      if (!spec.batched) {
        spec.inputs.push_back({t.sizes().vec(), t.scalar_type()});
        samples.push_back(t.detach().to(c10::kCPU).clone());
        continue;
      }
      if (t.dim() < 1 || t.size(0) < 1) {
        throw Error(ErrorCode::kInvalidInput,
                    "example input " + std::to_string(i) + " of model '" + name +
                        "' needs a leading batch dimension of size >= 1");
      }
      spec.inputs.push_back({t.sizes().slice(1).vec(), t.scalar_type()});
      samples.push_back(t.select(0, 0).detach().to(c10::kCPU).clone());
    }
    py::gil_scoped_release nogil;
    std::shared_ptr<const ModelProgram> program;
    if (kind == "aoti") {
      program = load_aoti_package(source);
    } else {
      program = torchscript_program(kind == "path" ? load_torchscript_file(source)
                                                   : load_torchscript_bytes(source));
    }
    return core_->register_model(std::move(spec), std::move(program), std::move(samples));
  }

  // `progress(done, total, what)` is called from the lane threads while start() runs.
  void start(const py::object& progress) {
    check_process("start()");
    check_not_own_thread("start()");
    ProgressFn fn;
    if (!progress.is_none()) {
      fn = [&progress](int done, int total, const std::string& what) {
        py::gil_scoped_acquire gil;
        try {
          progress(done, total, what);
        } catch (py::error_already_set& e) {
          e.discard_as_unraisable("gpulanes: start() progress callback");
        }
      };
    }
    py::gil_scoped_release nogil;
    core_->start(fn);
  }

  static py::list points_list(const std::vector<LatencyPoint>& points) {
    py::list out;
    for (const LatencyPoint& p : points) {
      py::dict d;
      d["batch_size"] = p.batch_size;
      d["mean_us"] = p.mean_us;
      d["p50_us"] = p.p50_us;
      d["p99_us"] = p.p99_us;
      d["samples"] = p.samples;
      if (p.device_p50_us > 0) d["device_p50_us"] = p.device_p50_us;
      out.append(d);
    }
    return out;
  }

  py::list profile(const std::string& model, int lane) const {
    return points_list(lane < 0 ? core_->profile(model) : core_->lane_profile(model, lane));
  }

  py::dict profile_origin(const std::string& model) const {
    const ProfileOrigin o = core_->profile_origin(model);
    py::dict d;
    d["lane_kind"] = o.lane_kind;
    d["sms"] = o.sms;
    d["sm_share"] = o.sm_share;
    return d;
  }

  // [{"model", "sms", "points"}] of every GPU partition lane's profile so far.
  py::list partition_profiles() const {
    py::list out;
    for (const auto& [key, points] : core_->partition_profiles()) {
      py::dict d;
      d["model"] = key.first;
      d["sms"] = key.second;
      d["points"] = points_list(points);
      out.append(d);
    }
    return out;
  }

  void set_profile(const std::string& model, const py::list& points, int sms) {
    std::vector<LatencyPoint> pts;
    for (py::handle h : points) {
      py::dict d = py::reinterpret_borrow<py::dict>(h);
      LatencyPoint p;
      p.batch_size = d["batch_size"].cast<int>();
      p.p50_us = d["p50_us"].cast<double>();
      p.mean_us = d.contains("mean_us") ? d["mean_us"].cast<double>() : p.p50_us;
      p.p99_us = d.contains("p99_us") ? d["p99_us"].cast<double>() : p.p50_us;
      p.samples = d.contains("samples") ? d["samples"].cast<int>() : 0;
      p.device_p50_us = d.contains("device_p50_us") ? d["device_p50_us"].cast<double>() : 0.0;
      pts.push_back(p);
    }
    core_->set_profile(model, pts, sms);
  }

  // The sink `make_sink()` returns when accepted, else the exception the caller must raise:
  // under overload refusing is the common path, and returning it costs a fraction of a C++
  // throw through pybind11. The sink (a Future, with its lock and condition) is made only once
  // the core has accepted the request, so that a refusal allocates next to nothing.
  py::object submit(const std::string& model, const py::sequence& inputs,
                    std::optional<std::int64_t> deadline_ns, int priority,
                    const py::function& make_sink) {
    check_process("submit()");
    std::vector<at::Tensor> tensors = request_tensors(model, inputs);
    auto pending = std::make_shared<PendingSink>();
    std::string why;
    // With the GIL held: submitting never waits for a thread that needs the GIL (a round it runs
    // inline may deliver, which takes the GIL again on this thread), and dropping the GIL here
    // would make every submit, refusals included, queue for it behind the delivery threads.
    const ErrorCode code = core_->try_submit(
        model, std::move(tensors), deadline_ns, priority,
        [pending](Outcome&& o) { pending->complete(std::move(o)); },  // in the delivery hook
        /*native=*/false, &why);
    if (code != ErrorCode::kOk) return refusal(code, model, why);
    py::object sink;
    try {
      sink = make_sink();
    } catch (py::error_already_set&) {
      // The request is queued: its outcome must still go somewhere. Nothing can observe it.
      pending->attach(py::none());
      throw;
    }
    pending->attach(sink);
    return sink;
  }

  // submit() for an asyncio event loop: the outcome goes to `queue` under `token`, straight from
  // the thread that decided it (no Future, no delivery thread, no GIL). None when accepted, else
  // the exception to raise.
  py::object submit_to(const std::string& model, const py::sequence& inputs,
                       std::optional<std::int64_t> deadline_ns, int priority,
                       std::shared_ptr<CompletionQueue> queue, std::uint64_t token) {
    check_process("submit()");
    std::vector<at::Tensor> tensors = request_tensors(model, inputs);
    std::string why;
    const ErrorCode code = core_->try_submit(
        model, std::move(tensors), deadline_ns, priority,
        [queue = std::move(queue), token](Outcome&& o) { queue->push(token, std::move(o)); },
        /*native=*/true, &why);
    return code == ErrorCode::kOk ? py::none() : refusal(code, model, why);
  }

  static py::object refusal(ErrorCode code, const std::string& model, std::string why) {
    if (code == ErrorCode::kUnknownModel) why = "no model named '" + model + "' is registered";
    return error_type(code)(why);
  }

  // submit + wait in C++: the completion needs no GIL and the waiter can poll, which saves two
  // thread wake-ups per request compared with a concurrent.futures.Future.
  py::object infer(const std::string& model, const py::sequence& inputs,
                   std::optional<std::int64_t> deadline_ns, int priority,
                   std::optional<double> timeout_s) {
    check_process("infer()");
    check_not_own_thread("infer()");
    std::vector<at::Tensor> tensors = request_tensors(model, inputs);
    auto slot = std::make_shared<SyncSlot>();
    WaitResult result;
    {
      py::gil_scoped_release nogil;
      core_->submit(model, std::move(tensors), deadline_ns, priority,
                    [slot](Outcome&& o) { slot->set(std::move(o)); }, /*native=*/true);
      result = wait_for_slot(*slot, spin_ns_, timeout_s);
    }
    if (result == WaitResult::kInterrupted) {
      PyErr_SetNone(PyExc_KeyboardInterrupt);
      throw py::error_already_set();
    }
    if (result == WaitResult::kTimeout) {
      PyErr_SetString(PyExc_TimeoutError, "infer() timed out; the request is still in flight");
      throw py::error_already_set();
    }
    Outcome& o = slot->outcome;
    if (!o.ok()) {
      PyErr_SetObject(error_type(o.code).ptr(), py::str(o.message).ptr());
      throw py::error_already_set();
    }
    return to_python(o.output);
  }

  void shutdown(bool drain) {
    if (forked()) return;  // nothing of it runs here; the parent's runtime is the parent's
    py::gil_scoped_release nogil;
    if (on_own_thread()) {
      // From a done-callback: refuse new requests now, finish (drain or fail) in the background.
      core_->close_submission();
      run_in_background([core = core_, drain] { core->shutdown(drain); });
      return;
    }
    core_->shutdown(drain);
  }

  py::list stats() const {
    std::vector<ModelStats> all;
    {
      py::gil_scoped_release nogil;
      all = core_->stats();
    }
    py::list out;
    for (const auto& s : all) {
      py::dict d = stats_dict(s);
      d["name"] = s.name;
      out.append(d);
    }
    return out;
  }

  py::list lane_stats() const {
    std::vector<LaneStats> all;
    {
      py::gil_scoped_release nogil;
      all = core_->lane_stats();
    }
    py::list out;
    for (const auto& s : all) out.append(lane_stats_dict(s));
    return out;
  }

  // Column lists (not row objects): cheap to turn into a DataFrame; "names" maps each model
  // index the records use to its name.
  py::dict trace() const {
    std::pair<std::vector<TraceRecord>, std::map<int, std::string>> t;
    {
      py::gil_scoped_release nogil;
      t = core_->named_trace();
    }
    py::dict d = trace_columns(t.first);
    d["names"] = t.second;
    return d;
  }

  std::string metrics_text() const {
    std::vector<ModelStats> all;
    std::vector<LaneStats> lanes;
    {
      py::gil_scoped_release nogil;
      all = core_->stats();
      lanes = core_->lane_stats();
    }
    return prometheus_text(all, lanes);
  }

  py::list lanes() const {
    py::list out;
    for (const auto& l : core_->lanes()) {
      py::dict d;
      d["index"] = l.index;
      d["kind"] = l.kind;
      d["device"] = l.device;
      d["sms"] = l.sms;
      d["models"] = l.models;
      d["loads"] = l.loads;
      if (l.kind == "cpu-process" || l.kind == "cuda-process" || l.kind == "cuda-mps") {
        d["worker_pid"] = l.worker_pid;
        d["worker_restarts"] = l.worker_restarts;
        d["broken"] = l.broken;
      }
      if (l.kind == "cuda-mps") {
        d["mps_thread_percentage"] = l.mps_thread_percentage;
        d["mps_pipe_dir"] = l.mps_pipe_dir;
      }
      out.append(d);
    }
    return out;
  }

  Runtime& core() { return *core_; }
  std::shared_ptr<Runtime> shared_core() const { return core_; }

  void set_lanes(const py::list& layout) {
    std::vector<LaneSpec> specs;
    for (py::handle h : layout) {
      auto d = h.cast<py::dict>();
      specs.push_back({d["device"].cast<std::string>(), d["sms"].cast<int>(),
                       d["models"].cast<std::vector<std::string>>()});
    }
    check_process("set_lanes()");
    check_not_own_thread("set_lanes()");
    py::gil_scoped_release nogil;  // warms up models on new lanes, waits for running batches
    core_->set_lanes(std::move(specs));
  }

  void unregister_model(const std::string& name, bool drain) {
    check_process("unregister()");
    check_not_own_thread("unregister()");
    py::gil_scoped_release nogil;  // waits for its requests, warms up the new lanes
    core_->unregister_model(name, drain);
  }

  // Every model index's name; an unregistered one's only with `unregistered`, else "" (rates
  // by index leave it out).
  std::vector<std::string> model_names(bool unregistered) const {
    return core_->model_names(unregistered);
  }

  std::uintptr_t lane_stream(int index) const {
    return reinterpret_cast<std::uintptr_t>(core_->lane_stream(index));
  }

  std::int64_t now_ns() const { return core_->clock().now(); }
  std::vector<double> predictor_weights() const {
    return core_->predictor() ? core_->predictor()->weights() : std::vector<double>{};
  }
  bool running() const { return !forked() && core_->running(); }

 private:
  DurationNs spin_ns_;             // how long infer() polls before sleeping
  const pid_t pid_ = getpid();     // the process that made it (a forked child cannot use it)
  std::shared_ptr<Runtime> core_;  // the core; destroyed without the GIL, shared with a
                                   // background shutdown begun on its own thread
};

}  // namespace

std::shared_ptr<Runtime> runtime_core(const py::handle& runtime) {
  return runtime.cast<PyRuntime&>().shared_core();
}

void init_runtime(py::module_& m) {
  py::class_<PyRuntime>(m, "Runtime")
      .def(py::init<std::string, std::string, py::dict, int, bool, int, double, int, bool,
                    py::dict, std::string, py::object, py::dict, std::string>(),
           py::arg("device"), py::arg("policy"), py::arg("policy_options"), py::arg("cpu_lanes"),
           py::arg("outputs_on_device"), py::arg("warmup_rounds"), py::arg("spin_us"),
           py::arg("profile_reps"), py::arg("trace"), py::arg("predictor"),
           py::arg("partitioning"), py::arg("replan"), py::arg("isolation"),
           py::arg("layout_changes") = "incremental")
      .def("predictor_weights", [](const PyRuntime& r) { return r.predictor_weights(); })
      .def("register_model", &PyRuntime::register_model, py::arg("name"), py::arg("kind"),
           py::arg("source"), py::arg("example_inputs"), py::arg("slo_ns"),
           py::arg("max_batch_size"), py::arg("max_queue"))
      .def("start", &PyRuntime::start, py::arg("progress") = py::none())
      .def("profile", &PyRuntime::profile, py::arg("model"), py::arg("lane") = -1)
      .def("set_profile", &PyRuntime::set_profile, py::arg("model"), py::arg("points"),
           py::arg("sms") = 0)
      .def("profile_origin", &PyRuntime::profile_origin, py::arg("model"))
      .def("partition_profiles", &PyRuntime::partition_profiles)
      .def("submit", &PyRuntime::submit, py::arg("model"), py::arg("inputs"),
           py::arg("deadline_ns"), py::arg("priority"), py::arg("make_sink"))
      .def("submit_to", &PyRuntime::submit_to, py::arg("model"), py::arg("inputs"),
           py::arg("deadline_ns"), py::arg("priority"), py::arg("queue"), py::arg("token"))
      .def("infer", &PyRuntime::infer, py::arg("model"), py::arg("inputs"),
           py::arg("deadline_ns"), py::arg("priority"), py::arg("timeout"))
      .def("shutdown", &PyRuntime::shutdown, py::arg("drain"))
      .def("stats", &PyRuntime::stats)
      .def("lane_stats", &PyRuntime::lane_stats)
      .def("lanes", &PyRuntime::lanes)
      .def("model_loads", [](PyRuntime& r) { return r.core().model_loads(); })
      .def("set_lanes", &PyRuntime::set_lanes, py::arg("layout"))
      .def("unregister_model", &PyRuntime::unregister_model, py::arg("name"), py::arg("drain"))
      .def("model_names", &PyRuntime::model_names, py::arg("unregistered"))
      .def("planning", [](PyRuntime& r) { return RuntimePlanning(r.core()); },
           py::keep_alive<0, 1>(), "The planning calls of this runtime (gpulanes.planning).")
      .def("lane_stream", [](const PyRuntime& r, int i) { return r.lane_stream(i); }, py::arg("index"),
           "The lane's cudaStream_t as an integer (0 on the CPU): for probes.")
      .def("metrics_text", &PyRuntime::metrics_text)
      .def("trace", &PyRuntime::trace)
      .def("now_ns", &PyRuntime::now_ns)
      .def_property_readonly("running", &PyRuntime::running)
      .def_property_readonly("core_id", &PyRuntime::core_id,
                             "Which core this is (compare with serving_runtime_id()).");
  py::class_<CompletionQueue, std::shared_ptr<CompletionQueue>>(m, "CompletionQueue")
      .def(py::init<>())
      .def_property_readonly("fd", &CompletionQueue::fd, "An eventfd, readable when outcomes wait.")
      .def("drain", [](CompletionQueue& q) {
        py::list out;
        for (auto& [token, o] : q.drain()) {
          if (!o.ok()) {
            out.append(py::make_tuple(token, false, make_error(o.code, o.message)));
            continue;
          }
          try {
            out.append(py::make_tuple(token, true, to_python(o.output)));
          } catch (const std::exception& e) {
            out.append(py::make_tuple(token, false, make_error(ErrorCode::kModelError, error_text(e))));
          }
        }
        return out;
      }, "Every (token, ok, result or exception) queued so far.");
  py::class_<ResolvedFlag, std::shared_ptr<ResolvedFlag>>(m, "ResolvedFlag")
      .def(py::init<>())
      .def("poll", [](const ResolvedFlag& f, double spin_us) {
        py::gil_scoped_release nogil;
        return f.poll(spin_us);
      }, py::arg("spin_us"), "Polls (GIL released) up to spin_us for the future to be resolved.");
  m.def("serving_runtime_id", [] { return reinterpret_cast<std::uintptr_t>(serving_runtime()); },
        "The core_id of the runtime whose own thread this is (in a done-callback), else 0.");
  m.def("join_background", [](double timeout_s) {
        py::gil_scoped_release nogil;
        return join_background(timeout_s);
      }, py::arg("timeout_s"),
        "Waits for shutdowns begun in done-callbacks to end; True when none is left.");
  m.def("aoti_package_metadata", [](const std::string& path) {
        return aoti_package_metadata(path);
      }, py::arg("path"), "An AOTInductor package's metadata (device, platform, CPU ISA, ...).");
  m.attr("PACKAGE_TORCH_VERSION_KEY") = kPackageTorchVersionKey;
}

}  // namespace gpulanes::bindings
