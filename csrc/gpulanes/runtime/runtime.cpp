#include "gpulanes/runtime/runtime.h"

#include <c10/core/InferenceMode.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/script.h>

#include <algorithm>

#include "gpulanes/core/check.h"
#include "gpulanes/core/serving_thread.h"
#include "gpulanes/exec/batching.h"
#include "gpulanes/exec/executor.h"

namespace gpulanes {

namespace {

// On the submitting thread, whose current CUDA streams are the submitter's: GPU inputs get an
// event on the stream that made them (the lane waits for it), and outputs left on the GPU get
// that thread's current stream as their consumer.
void note_streams(Request& req, bool gpu_outputs) {
  const c10::impl::DeviceGuardImplInterface* cuda = nullptr;
  for (const at::Tensor& t : req.inputs) {
    if (!t.is_cuda()) continue;
    if (std::any_of(req.inputs_ready.begin(), req.inputs_ready.end(),
                    [&](const c10::Event& e) { return e.device() == t.device(); })) {
      continue;
    }
    if (!cuda) cuda = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
    c10::Event ready(c10::DeviceType::CUDA);
    ready.record(cuda->getStream(t.device()));
    req.inputs_ready.push_back(std::move(ready));
  }
  if (gpu_outputs) {
    if (!cuda) cuda = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
    req.consumer_stream = cuda->getStream(cuda->getDevice());
  }
}

}  // namespace

Runtime::Runtime(RuntimeOptions options, std::shared_ptr<Clock> clock)
    : options_(std::move(options)),
      clock_(clock ? std::move(clock) : std::make_shared<SteadyClock>()),
      policy_(make_policy(options_.policy, options_.policy_config)) {
  queues_.reserve(ModelRegistry::kMaxModels);
  metrics_.reserve(ModelRegistry::kMaxModels);
  profiles_.reserve(ModelRegistry::kMaxModels);
  profile_origins_.reserve(ModelRegistry::kMaxModels);
  rates_.reserve(ModelRegistry::kMaxModels);
  const RuntimeOptions& o = options_;
  check_int("cpu_lanes", o.cpu_lanes, 1, 1024);
  check_int("warmup_rounds", o.warmup_rounds, 0, 1000);
  check_int("profile_reps", o.profile_reps, 1, 100000);
  check_real("profile_budget_s", o.profile_budget_s, 0, 3600, /*open_lo=*/true);
  check_real("spin_us", o.spin_us, 0, 1e6);  // polling beyond a second only burns a core
  if (o.isolation != "thread" && o.isolation != "process") {
    throw Error(ErrorCode::kInvalidInput,
                "isolation must be 'thread' or 'process'; got '" + o.isolation + "'");
  }
  check_real("worker_watchdog_s", o.worker_watchdog_s, 0, 86400, /*open_lo=*/true);
  check_real("worker_start_timeout_s", o.worker_start_timeout_s, 0, 3600, /*open_lo=*/true);
  check_int("worker_max_restarts", o.worker_max_restarts, 0, 1000);
  check_real("worker_spin_us", o.worker_spin_us, 0, 1e6);
  check_real("worker_retry_after_s", o.worker_retry_after_s, 0, 86400, /*open_lo=*/true);
  static const char* parts[] = {"auto", "green", "streams", "none", "mps", "cpu"};
  if (std::find(std::begin(parts), std::end(parts), o.partitioning) == std::end(parts)) {
    throw Error(ErrorCode::kInvalidInput, "partitioning must be one of auto, green, streams, "
                                          "none, mps, cpu; got '" + o.partitioning + "'");
  }
  const std::string& d = o.device;
  const bool cuda_n = d.rfind("cuda:", 0) == 0 && d.size() > 5 && d.size() < 10 &&
                      std::all_of(d.begin() + 5, d.end(), [](char c) { return c >= '0' && c <= '9'; });
  if (d != "auto" && d != "cpu" && d != "cuda" && d != "virtual" && !cuda_n) {
    throw Error(ErrorCode::kInvalidInput,
                "device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got '" + d + "'");
  }
  validate(o.predictor);
  validate(o.replan);
}

Runtime::~Runtime() { shutdown(false); }

void Runtime::set_delivery_hook(DeliveryHook hook) {
  std::lock_guard<std::mutex> lock(control_mu_);
  if (started_) throw Error(ErrorCode::kInvalidInput, "set the delivery hook before start()");
  delivery_hook_ = std::move(hook);
}

void Runtime::set_profile(const std::string& model, const std::vector<LatencyPoint>& points, int sms) {
  std::lock_guard<std::mutex> lock(control_mu_);
  if (started_) throw Error(ErrorCode::kInvalidInput, "set profiles before start()");
  const int m = models_.find(model);
  if (m < 0) throw Error(ErrorCode::kUnknownModel, "no model named '" + model + "' is registered");
  if (sms < 0) throw Error(ErrorCode::kInvalidInput, "sms must be >= 0, got " + std::to_string(sms));
  try {
    if (sms > 0) {
      std::lock_guard<std::mutex> plock(partition_mu_);
      partition_profiles_[{m, sms}] = LatencyProfile(points);
    } else {
      profiles_[m] = LatencyProfile(points);
      profile_origins_[m] = ProfileOrigin{};
    }
  } catch (const std::invalid_argument& e) {
    throw Error(ErrorCode::kInvalidInput, "bad profile for '" + model + "': " + e.what());
  }
}

SchedulingState Runtime::scheduling_state() {
  return SchedulingState{models_, queues_, book_, rates_, predictor_};
}

void Runtime::start(const ProgressFn& progress) {
  std::lock_guard<std::mutex> lock(control_mu_);
  if (shut_down_) throw Error(ErrorCode::kRuntimeClosed, "runtime was shut down");
  if (started_) throw Error(ErrorCode::kInvalidInput, "runtime already started");
  create_lanes();
  gpu_outputs_ = options_.outputs_on_device &&
                 std::any_of(lanes_.begin(), lanes_.end(), [](const auto& l) { return l->device_index() >= 0; });
  std::vector<Lane*> lane_ptrs;
  {
    std::unique_lock<std::shared_mutex> writing(submit_mu_);  // lane_stats() reads them shared
    for (auto& lane : lanes_) {
      lane_ptrs.push_back(lane.get());
      lane_metrics_.push_back(std::make_unique<LaneMetrics>(lane->index(), lane->kind(), lane->device()));
    }
  }
  // The loop exists before any lane serves (a lane reports to it), but runs only after all
  // lanes are warm.
  loop_ = std::make_unique<EventLoop>(*clock_, scheduling_state(), lane_ptrs, *policy_,
                                      static_cast<LoopSink&>(*this));
  try {
    start_lanes(lanes_, progress);
  } catch (...) {
    lanes_.clear();
    {
      std::unique_lock<std::shared_mutex> writing(submit_mu_);
      lane_metrics_.clear();
    }
    loop_.reset();
    throw;
  }
  build_profile_book();
  admission_ = std::make_unique<Admission>(ModelRegistry::kMaxModels);
  {
    std::vector<DurationNs> windows;
    for (int m = 0; m < models_.size(); ++m) windows.push_back(models_.at(m).spec.slo);
    shape_ = std::make_unique<ArrivalShape>(windows, ModelRegistry::kMaxModels);
  }
  if (!clock_->is_virtual()) {  // on virtual time, a driver calls run_round()
    // Virtual time keeps delivery on the driver's thread: its caller expects every outcome of
    // a step delivered when the step returns.
    if (delivery_hook_) {
      deliverer_ = std::make_unique<Deliverer>(delivery_hook_, [this] { mark_serving_thread(this); });
    }
    loop_->start([this] { mark_serving_thread(this); });
  }
  started_at_.store(clock_->now(), std::memory_order_release);
  if (options_.replan.every_s > 0 && !clock_->is_virtual()) {
    replanner_ = std::make_unique<Replanner>(options_.replan, models_.size(), clock_->now(),
                                             ModelRegistry::kMaxModels);
  }
  started_ = true;
  accepting_.store(true, std::memory_order_release);
  if (replanner_) {
    planner_thread_ = std::thread([this] {
      mark_serving_thread(this);
      planner_main();
    });
  }
}

void Runtime::on_dispatch(int lane, const Batch& batch, TimeNs now) {
  if (predictor_) {
    predictor_->on_start(batch.id, batch.model, lane, static_cast<int>(batch.requests.size()), now,
                         batch.predicted_ns);
  }
}

void Runtime::submit(const std::string& model, std::vector<at::Tensor> inputs,
                     std::optional<TimeNs> deadline, int priority, CompletionFn done,
                     bool native) {
  std::string why;
  const ErrorCode code = try_submit(model, std::move(inputs), deadline, priority, std::move(done),
                                    native, &why);
  if (code != ErrorCode::kOk) {
    throw Error(code, code == ErrorCode::kUnknownModel
                          ? "no model named '" + model + "' is registered" : why);
  }
}

ErrorCode Runtime::try_submit(int m, std::vector<at::Tensor> inputs,
                              std::optional<TimeNs> deadline, int priority, CompletionFn done,
                              bool native, std::string* why) {
  // Shared with other submitters; exclusive only while registering or closing, so nothing is
  // pushed after the loop's final drain and no lookup races a registration.
  std::shared_lock<std::shared_mutex> lock(submit_mu_);
  return submit_locked(lock, m, std::move(inputs), deadline, priority, std::move(done), native,
                       why);
}

ErrorCode Runtime::try_submit(const std::string& model, std::vector<at::Tensor> inputs,
                              std::optional<TimeNs> deadline, int priority, CompletionFn done,
                              bool native, std::string* why) {
  // Looked up under the lock: a slot unregistered and reused in between would take the request
  // for another model.
  std::shared_lock<std::shared_mutex> lock(submit_mu_);
  return submit_locked(lock, models_.find(model), std::move(inputs), deadline, priority,
                       std::move(done), native, why);
}

ErrorCode Runtime::submit_locked(std::shared_lock<std::shared_mutex>& lock, int m,
                                 std::vector<at::Tensor> inputs, std::optional<TimeNs> deadline,
                                 int priority, CompletionFn done, bool native, std::string* why) {
  if (m < 0 || m >= models_.size() || models_.retired(m)) {
    if (why) *why = "no model with index " + std::to_string(m) + " is registered";
    return ErrorCode::kUnknownModel;
  }
  ModelMetrics& metrics = *metrics_[m];
  metrics.on_submitted();
  auto reject = [&](ErrorCode code, auto&& explain) {
    metrics.on_rejected();
    trace_rejection(m, deadline);
    if (why) *why = explain();
    return code;
  };
  if (!accepting_.load(std::memory_order_acquire)) {
    return reject(ErrorCode::kRuntimeClosed, [&] {
      return std::string(started_at_.load() ? "runtime is shut down"
                                            : "runtime not started; call start() first");
    });
  }
  const ModelSpec& spec = models_.at(m).spec;
  if (priority != 0 && priority != 1) {
    return reject(ErrorCode::kInvalidInput, [] { return std::string("priority must be 0 or 1"); });
  }
  try {
    validate_inputs(spec, inputs);
  } catch (const Error& e) {
    const std::string msg = e.what();
    return reject(e.code(), [&] { return msg; });
  }
  if (!book_.served(m)) {
    return reject(ErrorCode::kInvalidInput, [&] {
      return "no lane serves model '" + spec.name + "' in the current lane layout";
    });
  }
  const TimeNs now = clock_->now();
  const TimeNs due = deadline ? *deadline : now + spec.slo;
  if (due <= now) {
    return reject(ErrorCode::kDeadlineExceeded, [&] {
      return "deadline already passed at submit (" + std::to_string(to_ms(now - due)) + " ms ago)";
    });
  }
  if (replanner_) replanner_->on_arrival(m);  // demand, whether or not it is admitted
  shape_->on_arrival(m, now);
  // Checked again at the push; a full queue found here skips the admission maths and the copy.
  auto queue_full = [&] {
    return reject(ErrorCode::kQueueFull, [&] {
      return "queue of model '" + spec.name + "' is full (max_queue=" +
             std::to_string(spec.max_queue) + ")";
    });
  };
  if (queues_[m]->size() >= queues_[m]->capacity()) return queue_full();
  if (!policy_->admits(scheduling_state(), m, now, due)) {
    return reject(ErrorCode::kDeadlineExceeded, [&] {
      return "deadline cannot be met even by a batch of one on an idle lane (predicted " +
             std::to_string(to_ms(book_.fastest(m, 1))) + " ms, " +
             std::to_string(to_ms(due - now)) + " ms left)";
    });
  }
  if (std::string busy; !policy_->has_room(scheduling_state(), m, priority, now, due, &busy)) {
    return reject(ErrorCode::kOverloaded, [&] { return busy; });
  }
  if (!admission_->admit(m, now)) {
    return reject(ErrorCode::kOverloaded, [&] {
      return "model '" + spec.name + "' is shed: the lane plan serves " +
             std::to_string(static_cast<long>(admission_->limit(m))) +
             " requests/s of it and the devices have no room for more";
    });
  }
  rates_[m]->on_arrival(now);
  {
    // The request owns a copy: its result must not depend on what the caller does with its
    // tensors after submit returns (on a GPU the copy is queued on the caller's stream, which
    // note_streams then records).
    c10::InferenceMode no_autograd;
    for (at::Tensor& t : inputs) t = t.detach().clone(at::MemoryFormat::Contiguous);
  }
  auto req = std::make_unique<Request>();
  req->id = next_id_.fetch_add(1, std::memory_order_relaxed);
  req->model = m;
  req->inputs = std::move(inputs);
  req->arrival = now;
  req->deadline = due;
  req->priority = priority;
  req->on_done = std::move(done);
  req->native_completion = native;
  note_streams(*req, gpu_outputs_);
  if (!queues_[m]->try_push(req)) {
    req->on_done = nullptr;  // never called for a refused request
    return queue_full();
  }
  // The round this may run inline can fail expired requests, whose callbacks may call back in
  // (even shutdown()): no core lock may be held by then.
  lock.unlock();
  loop_->wake();
  return ErrorCode::kOk;
}

void Runtime::refuse(const std::string& model, ErrorCode code, const std::string& why) {
  {
    std::shared_lock<std::shared_mutex> lock(submit_mu_);
    const int m = models_.find(model);
    if (m < 0) throw Error(ErrorCode::kUnknownModel, "no model named '" + model + "' is registered");
    metrics_[m]->on_submitted();
    metrics_[m]->on_rejected();
    trace_rejection(m, std::nullopt);
  }
  throw Error(code, why);
}

void Runtime::trace_rejection(int m, std::optional<TimeNs> deadline) {
  if (!options_.trace) return;
  TraceRecord r;
  r.model = m;
  r.arrival = r.end = clock_->now();
  r.deadline = deadline.value_or(r.arrival + models_.at(m).spec.slo);
  r.outcome = TraceOutcome::kRejected;
  trace_.add(r);
}

void Runtime::deliver(std::vector<RequestPtr>&& requests, std::vector<Outcome>&& outcomes) const {
  std::vector<RequestPtr> hooked;
  std::vector<Outcome> hooked_outcomes;
  for (std::size_t i = 0; i < requests.size(); ++i) {
    if (requests[i]->native_completion || !delivery_hook_) {
      requests[i]->complete(std::move(outcomes[i]));
    } else {
      hooked.push_back(std::move(requests[i]));
      hooked_outcomes.push_back(std::move(outcomes[i]));
    }
  }
  if (hooked.empty()) return;
  if (deliverer_) {
    deliverer_->post(std::move(hooked), std::move(hooked_outcomes));
    return;
  }
  delivery_hook_([&] {
    for (std::size_t i = 0; i < hooked.size(); ++i) hooked[i]->complete(std::move(hooked_outcomes[i]));
  });
}

void Runtime::on_batch_finished(Batch&& batch, std::vector<Outcome>&& outcomes,
                                const BatchReport& report) {
  if (predictor_) predictor_->on_finish(batch.id, report.lane, report.end);
  ModelMetrics& metrics = *metrics_[batch.model];
  // Metrics first, so a caller woken by its future already sees itself counted.
  int met = 0, missed = 0, failed = 0;
  for (std::size_t i = 0; i < batch.requests.size(); ++i) {
    const Request& r = *batch.requests[i];
    if (outcomes[i].ok()) {
      metrics.on_result(r.arrival, r.started, report.end, r.deadline);
      (report.end <= r.deadline ? met : missed)++;
    } else {
      metrics.on_failure(/*dropped=*/false);
      failed++;
    }
  }
  const int size = static_cast<int>(batch.requests.size());
  const DurationNs actual_ns = report.end - report.start;
  metrics.on_batch(size, report.exec_ns, report.predicted_ns, actual_ns, report.reruns);
  lane_metrics_[report.lane]->on_batch(models_.at(batch.model).spec.name, size, met, missed,
                                       failed, actual_ns);
  if (options_.trace || options_.on_finished) {
    std::vector<TraceRecord> rs;
    for (std::size_t i = 0; i < batch.requests.size(); ++i) {
      const Request& r = *batch.requests[i];
      const TraceOutcome outcome = !outcomes[i].ok() ? TraceOutcome::kFailed
                                   : report.end <= r.deadline ? TraceOutcome::kMet
                                                              : TraceOutcome::kMissed;
      if (options_.on_finished) options_.on_finished(r, outcome, report.end);
      if (!options_.trace) continue;
      rs.push_back({r.id, r.model, r.arrival, r.started, report.end, r.deadline,
                    static_cast<std::int64_t>(batch.id), report.lane,
                    static_cast<int>(batch.requests.size()), outcome});
    }
    if (!rs.empty()) trace_.add(rs);
  }
  BatchObservation obs;
  obs.model = batch.model;
  obs.lane = report.lane;
  obs.size = size;
  obs.predicted_ns = report.predicted_ns;
  obs.profiled_ns = book_.predict(batch.model, report.lane, obs.size);
  obs.actual_ns = actual_ns;
  obs.slo_ns = models_.at(batch.model).spec.slo;
  if (report.reruns == 0) loop_->observe(obs);  // re-runs say nothing of a batch's latency
  deliver(std::move(batch.requests), std::move(outcomes));
  loop_->lane_idle(report.lane);
}

void Runtime::fail(std::vector<RequestPtr>&& requests, ErrorCode code, const std::string& why) {
  const TimeNs now = clock_->now();
  std::vector<TraceRecord> rs;
  const TraceOutcome outcome =
      code == ErrorCode::kDeadlineExceeded ? TraceOutcome::kDropped : TraceOutcome::kFailed;
  for (const auto& r : requests) {
    metrics_[r->model]->on_failure(code == ErrorCode::kDeadlineExceeded);
    if (options_.on_finished) options_.on_finished(*r, outcome, now);
    if (options_.trace) {
      rs.push_back({r->id, r->model, r->arrival, 0, now, r->deadline, -1, -1, 0, outcome});
    }
  }
  if (!rs.empty()) trace_.add(rs);
  std::vector<Outcome> outcomes;
  outcomes.reserve(requests.size());
  for (std::size_t i = 0; i < requests.size(); ++i) outcomes.push_back(Outcome::failure(code, why));
  deliver(std::move(requests), std::move(outcomes));
}

void Runtime::shutdown(bool drain) {
  stop_planner();  // first: it may be applying a plan, which takes control_mu_
  std::lock_guard<std::mutex> lock(control_mu_);
  if (shut_down_) return;
  shut_down_ = true;
  {
    // Waits for submits in progress, so nothing is pushed after the loop's final drain.
    std::unique_lock<std::shared_mutex> closing(submit_mu_);
    accepting_.store(false, std::memory_order_release);
  }
  if (loop_) loop_->stop(drain);
  for (auto& lane : lanes_) lane->stop();
  if (deliverer_) deliverer_->stop();  // last: the loop's final failures went through it
}

std::vector<ModelStats> Runtime::stats() const {
  std::shared_lock<std::shared_mutex> lock(submit_mu_);
  const TimeNs now = clock_->now();
  const TimeNs t0 = started_at_.load(std::memory_order_acquire);
  std::vector<ModelStats> out;
  for (int m = 0; m < models_.size(); ++m) {
    if (!models_.retired(m)) out.push_back(metrics_[m]->snapshot(now, t0));
  }
  return out;
}

std::vector<std::string> Runtime::model_names(bool unregistered) const {
  std::shared_lock<std::shared_mutex> lock(submit_mu_);  // a reused slot is staged under it
  std::vector<std::string> out;
  for (int m = 0; m < models_.size(); ++m) {
    out.push_back(unregistered || !models_.retired(m) ? models_.at(m).spec.name : "");
  }
  return out;
}

std::pair<std::vector<TraceRecord>, std::map<int, std::string>> Runtime::named_trace() const {
  std::shared_lock<std::shared_mutex> lock(submit_mu_);  // no slot changes name meanwhile
  std::map<int, std::string> names;
  std::vector<TraceRecord> records = trace_.snapshot(names);
  for (int m = 0; m < models_.size(); ++m) names[m] = models_.at(m).spec.name;
  return {std::move(records), std::move(names)};
}

std::vector<LaneStats> Runtime::lane_stats() const {
  std::shared_lock<std::shared_mutex> lock(submit_mu_);
  const TimeNs now = clock_->now();
  const TimeNs t0 = started_at_.load(std::memory_order_acquire);
  std::vector<LaneStats> out;
  for (const auto& l : lane_metrics_) out.push_back(l->snapshot(now, t0));
  return out;
}

std::vector<LatencyPoint> Runtime::profile(const std::string& model) const {
  const int m = models_.find(model);
  if (m < 0) throw Error(ErrorCode::kUnknownModel, "no model named '" + model + "' is registered");
  return profiles_[m].points();
}

ProfileOrigin Runtime::profile_origin(const std::string& model) const {
  const int m = models_.find(model);
  if (m < 0) throw Error(ErrorCode::kUnknownModel, "no model named '" + model + "' is registered");
  std::lock_guard<std::mutex> lock(partition_mu_);  // lane threads set it while starting
  return profile_origins_[m];
}

std::map<std::pair<std::string, int>, std::vector<LatencyPoint>> Runtime::partition_profiles()
    const {
  std::shared_lock<std::shared_mutex> names(submit_mu_);  // a reused slot is staged under it
  std::lock_guard<std::mutex> lock(partition_mu_);
  std::map<std::pair<std::string, int>, std::vector<LatencyPoint>> out;
  for (const auto& [key, profile] : partition_profiles_) {
    out[{models_.at(key.first).spec.name, key.second}] = profile.points();
  }
  return out;
}

std::vector<LatencyPoint> Runtime::lane_profile(const std::string& model, int lane) const {
  const int m = models_.find(model);
  if (m < 0) throw Error(ErrorCode::kUnknownModel, "no model named '" + model + "' is registered");
  std::shared_lock<std::shared_mutex> lock(submit_mu_);  // lanes_ is swapped under it
  if (lane < 0 || lane >= static_cast<int>(lanes_.size())) {
    throw Error(ErrorCode::kInvalidInput, "no lane " + std::to_string(lane));
  }
  return book_.profile(m, lane).points();
}

TimeNs Runtime::run_round() {
  if (!loop_ || !clock_->is_virtual()) {
    throw Error(ErrorCode::kInvalidInput, "run_round() is for a started runtime on virtual time");
  }
  return loop_->run_round();
}


}  // namespace gpulanes
