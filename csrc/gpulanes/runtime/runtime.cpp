#include "gpulanes/runtime/runtime.h"

#include <torch/script.h>

#include <algorithm>

#include "gpulanes/exec/batching.h"
#include "gpulanes/exec/executor.h"

namespace gpulanes {

Runtime::Runtime(RuntimeOptions options, std::shared_ptr<Clock> clock)
    : options_(std::move(options)),
      clock_(clock ? std::move(clock) : std::make_shared<SteadyClock>()),
      policy_(make_policy(options_.policy, options_.policy_config)) {
  if (options_.cpu_lanes < 1) throw Error(ErrorCode::kInvalidInput, "cpu_lanes must be >= 1");
}

Runtime::~Runtime() { shutdown(false); }

int Runtime::register_model(ModelSpec spec, torch::jit::Module module, std::vector<at::Tensor> example) {
  std::lock_guard<std::mutex> lock(control_mu_);
  if (started_ || shut_down_) {
    throw Error(ErrorCode::kInvalidInput, "register models before start()");
  }
  std::unique_lock<std::shared_mutex> registering(submit_mu_);
  const std::string name = spec.name;
  const std::size_t cap = spec.max_queue;
  const int idx = models_.add(std::move(spec), std::move(module), std::move(example));
  queues_.push_back(std::make_unique<RequestQueue>(cap, policy_->queue_order()));
  metrics_.push_back(std::make_unique<ModelMetrics>(name));
  profiles_.emplace_back();
  rates_.push_back(std::make_unique<ArrivalRate>());
  return idx;
}

int Runtime::register_virtual_model(ModelSpec spec) {
  std::lock_guard<std::mutex> lock(control_mu_);
  if (started_ || shut_down_) {
    throw Error(ErrorCode::kInvalidInput, "register models before start()");
  }
  if (options_.device != "virtual") {
    throw Error(ErrorCode::kInvalidInput, "models without weights need device 'virtual'");
  }
  std::unique_lock<std::shared_mutex> registering(submit_mu_);
  const std::string name = spec.name;
  const std::size_t cap = spec.max_queue;
  const int idx = models_.add_virtual(std::move(spec));
  queues_.push_back(std::make_unique<RequestQueue>(cap, policy_->queue_order()));
  metrics_.push_back(std::make_unique<ModelMetrics>(name));
  profiles_.emplace_back();
  rates_.push_back(std::make_unique<ArrivalRate>());
  return idx;
}

void Runtime::set_delivery_hook(DeliveryHook hook) {
  std::lock_guard<std::mutex> lock(control_mu_);
  if (started_) throw Error(ErrorCode::kInvalidInput, "set the delivery hook before start()");
  delivery_hook_ = std::move(hook);
}

void Runtime::set_profile(const std::string& model, const std::vector<LatencyPoint>& points) {
  std::lock_guard<std::mutex> lock(control_mu_);
  if (started_) throw Error(ErrorCode::kInvalidInput, "set profiles before start()");
  const int m = models_.find(model);
  if (m < 0) throw Error(ErrorCode::kUnknownModel, "no model named '" + model + "' is registered");
  try {
    profiles_[m] = LatencyProfile(points);
  } catch (const std::invalid_argument& e) {
    throw Error(ErrorCode::kInvalidInput, "bad profile for '" + model + "': " + e.what());
  }
}

SchedulingState Runtime::scheduling_state() {
  return SchedulingState{models_, queues_, book_, rates_, predictor_};
}

void Runtime::create_lanes() {
  const std::string& dev = options_.device;
  const int gpus = cuda_device_count();
  auto add_cuda = [&](int d) {
    lanes_.push_back(std::make_unique<WorkerLane>(static_cast<int>(lanes_.size()), "cuda-stream",
                                            make_cuda_stream_executor(d, options_.outputs_on_device),
                                            *clock_, from_us(options_.spin_us)));
  };
  if (dev == "virtual") {
    backend_ = options_.virtual_backend;
    if (!backend_ && options_.virtual_latency) {
      backend_ = make_fixed_latency_backend(options_.virtual_lanes, options_.virtual_latency);
    }
    if (!clock_->is_virtual() || !backend_) {
      throw Error(ErrorCode::kInvalidInput,
                  "device 'virtual' needs a VirtualClock and a backend or latency function");
    }
    lanes_ = backend_->make_lanes(*clock_);
    if (lanes_.empty()) throw Error(ErrorCode::kInvalidInput, "the virtual backend made no lanes");
  } else if (dev == "cpu" || (dev == "auto" && gpus == 0)) {
    for (int i = 0; i < options_.cpu_lanes; ++i) {
      lanes_.push_back(std::make_unique<WorkerLane>(i, "cpu", make_cpu_executor(), *clock_,
                                                  from_us(options_.spin_us)));
    }
  } else if (dev == "cuda" || dev == "auto") {
    if (gpus == 0) throw Error(ErrorCode::kInvalidInput, "device='cuda' but no usable CUDA GPU");
    for (int d = 0; d < gpus; ++d) add_cuda(d);
  } else if (dev.rfind("cuda:", 0) == 0) {
    int d = -1;
    try { d = std::stoi(dev.substr(5)); } catch (const std::exception&) {}
    if (d < 0 || d >= gpus) {
      throw Error(ErrorCode::kInvalidInput, "device '" + dev + "' not available (" +
                                                std::to_string(gpus) + " CUDA GPU(s))");
    }
    add_cuda(d);
  } else {
    throw Error(ErrorCode::kInvalidInput,
                "unknown device '" + dev + "' (use 'auto', 'cpu', 'cuda' or 'cuda:N')");
  }
}

namespace {

// `b` copies of each example sample, stacked: a realistic batch for warm-up and profiling.
std::vector<c10::IValue> example_batch(const RegisteredModel& model, int b) {
  std::vector<c10::IValue> batched;
  for (const at::Tensor& sample : model.example) {
    std::vector<std::int64_t> reps(sample.dim() + 1, 1);
    reps[0] = b;
    batched.emplace_back(sample.unsqueeze(0).repeat(reps));
  }
  return batched;
}

// 1, 2, 4, ... and max_batch_size itself.
std::vector<int> profiled_sizes(int max_batch) {
  std::vector<int> sizes;
  for (int b = 1; b < max_batch; b *= 2) sizes.push_back(b);
  sizes.push_back(max_batch);
  return sizes;
}

}  // namespace

LatencyPoint Runtime::measure_batch(Lane& lane, int m, int b) {
  // What a served batch costs on the lane: stacking, forward (with its copies), splitting.
  const RegisteredModel& model = models_.at(m);
  SteadyClock wall;
  std::vector<DurationNs> samples, device;
  const TimeNs budget_end = wall.now() + static_cast<DurationNs>(options_.profile_budget_s * 1e9);
  for (int i = 0; i < std::max(3, options_.profile_reps); ++i) {
    std::vector<c10::IValue> inputs = example_batch(model, b);
    const TimeNs t0 = wall.now();
    split_output(lane.executor()->run(m, std::move(inputs)), static_cast<std::size_t>(b));
    samples.push_back(wall.now() - t0);
    if (const std::int64_t d = lane.executor()->last_device_ns(); d > 0) device.push_back(d);
    if (i >= 2 && wall.now() > budget_end) break;
  }
  LatencyPoint point = summarize_samples(b, std::move(samples));
  if (!device.empty()) point.device_p50_us = summarize_samples(b, std::move(device)).p50_us;
  return point;
}

void Runtime::prepare_lane(Lane& lane, bool measure, const ProgressFn& progress) {
  // Loads every model onto the lane and runs it at every profiled batch size: this surfaces broken
  // models at start() instead of on live traffic, checks the output can be split per request,
  // and takes the TorchScript executor's profiling runs out of the serving path. Then measures
  // the latency profile of each model that has none.
  int total = 0, done = 0;
  for (int m = 0; m < models_.size(); ++m) {
    total += 1 + (measure && profiles_[m].empty()
                      ? static_cast<int>(profiled_sizes(models_.at(m).spec.max_batch_size).size())
                      : 0);
  }
  for (int m = 0; m < models_.size(); ++m) {
    const RegisteredModel& model = models_.at(m);
    std::string step = "warm-up " + model.spec.name;
    try {
      if (progress) progress(done, total, step);
      lane.executor()->load(m, *model.module);
      // Every profiled size, also when a profile was given: TorchScript specializes on the
      // shapes it sees, and the first call at a new batch size is slow.
      for (int round = 0; round < std::max(1, options_.warmup_rounds); ++round) {
        for (int b : profiled_sizes(model.spec.max_batch_size)) {
          split_output(lane.executor()->run(m, example_batch(model, b)), static_cast<std::size_t>(b));
        }
      }
      ++done;
      if (!measure || !profiles_[m].empty()) continue;
      std::vector<LatencyPoint> points;
      for (int b : profiled_sizes(model.spec.max_batch_size)) {
        step = "profile " + model.spec.name + " batch " + std::to_string(b);
        if (progress) progress(done, total, step);
        points.push_back(measure_batch(lane, m, b));
        ++done;
      }
      profiles_[m] = LatencyProfile(points);
    } catch (const std::exception& e) {
      throw Error(ErrorCode::kModelError, "model '" + model.spec.name + "' failed its " + step +
                                              " on " + lane.device() + ": " +
                                              std::string(e.what()).substr(0, 4000));
    }
  }
  if (progress) progress(done, total, "ready");
}

void Runtime::start(const ProgressFn& progress) {
  std::lock_guard<std::mutex> lock(control_mu_);
  if (shut_down_) throw Error(ErrorCode::kRuntimeClosed, "runtime was shut down");
  if (started_) throw Error(ErrorCode::kInvalidInput, "runtime already started");
  create_lanes();
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
    for (auto& lane : lanes_) {
      Lane* l = lane.get();
      std::function<void()> init;
      if (l->executor()) {
        const bool measure = l->index() == 0;  // one profile per model, from the first lane
        init = [this, l, measure, &progress] { prepare_lane(*l, measure, progress); };
      }
      lane->start(static_cast<LaneListener*>(this), init);
    }
  } catch (...) {
    for (auto& lane : lanes_) lane->stop();
    lanes_.clear();
    {
      std::unique_lock<std::shared_mutex> writing(submit_mu_);
      lane_metrics_.clear();
    }
    loop_.reset();
    throw;
  }
  build_profile_book();
  if (!clock_->is_virtual()) loop_->start();  // on virtual time, a driver calls run_round()
  started_at_.store(clock_->now(), std::memory_order_release);
  started_ = true;
  accepting_.store(true, std::memory_order_release);
}

void Runtime::build_profile_book() {
  const int n_models = models_.size();
  std::vector<std::vector<const LatencyProfile*>> lane_profiles(lanes_.size());
  std::vector<std::vector<char>> serves(lanes_.size());
  std::vector<int> max_batch;
  for (int m = 0; m < n_models; ++m) max_batch.push_back(models_.at(m).spec.max_batch_size);
  for (std::size_t l = 0; l < lanes_.size(); ++l) {
    for (int m = 0; m < n_models; ++m) {
      serves[l].push_back(lanes_[l]->serves(m) ? 1 : 0);
      lane_profiles[l].push_back(backend_ ? backend_->lane_profile(static_cast<int>(l), m) : nullptr);
    }
  }
  book_.build(profiles_, lane_profiles, serves, max_batch);
  std::vector<int> device;
  std::vector<double> share;
  for (const auto& lane : lanes_) {
    device.push_back(lane->device_index());
    share.push_back(lane->sm_share());
  }
  predictor_ = std::make_unique<LatencyPredictor>(options_.predictor, book_, device, share);
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
  const ErrorCode code = try_submit(models_.find(model), std::move(inputs), deadline, priority,
                                    std::move(done), native, &why);
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
  if (m < 0 || m >= models_.size()) {
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
  if (!policy_->admits(scheduling_state(), m, now, due)) {
    return reject(ErrorCode::kDeadlineExceeded, [&] {
      return "deadline cannot be met even by a batch of one on an idle lane (predicted " +
             std::to_string(to_ms(book_.fastest(m, 1))) + " ms, " +
             std::to_string(to_ms(due - now)) + " ms left)";
    });
  }
  rates_[m]->on_arrival(now);
  auto req = std::make_unique<Request>();
  req->id = next_id_.fetch_add(1, std::memory_order_relaxed);
  req->model = m;
  req->inputs = std::move(inputs);
  req->arrival = now;
  req->deadline = due;
  req->priority = priority;
  req->on_done = std::move(done);
  req->native_completion = native;
  if (!queues_[m]->try_push(req)) {
    req->on_done = nullptr;  // never called for a refused request
    return reject(ErrorCode::kQueueFull, [&] {
      return "queue of model '" + spec.name + "' is full (max_queue=" +
             std::to_string(spec.max_queue) + ")";
    });
  }
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

void Runtime::deliver(std::vector<RequestPtr>& requests, std::vector<Outcome>& outcomes) const {
  bool hooked = false;
  for (std::size_t i = 0; i < requests.size(); ++i) {
    if (requests[i]->native_completion || !delivery_hook_) {
      requests[i]->complete(std::move(outcomes[i]));
    } else {
      hooked = true;
    }
  }
  if (!hooked) return;
  delivery_hook_([&] {
    for (std::size_t i = 0; i < requests.size(); ++i) {
      if (!requests[i]->completed()) requests[i]->complete(std::move(outcomes[i]));
    }
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
  metrics.on_batch(size, report.exec_ns, report.predicted_ns, actual_ns);
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
  loop_->observe(obs);
  deliver(batch.requests, outcomes);
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
  deliver(requests, outcomes);
}

void Runtime::shutdown(bool drain) {
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
}

std::vector<ModelStats> Runtime::stats() const {
  std::shared_lock<std::shared_mutex> lock(submit_mu_);
  const TimeNs now = clock_->now();
  const TimeNs t0 = started_at_.load(std::memory_order_acquire);
  std::vector<ModelStats> out;
  for (const auto& m : metrics_) out.push_back(m->snapshot(now, t0));
  return out;
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

TimeNs Runtime::run_round() {
  if (!loop_ || !clock_->is_virtual()) {
    throw Error(ErrorCode::kInvalidInput, "run_round() is for a started runtime on virtual time");
  }
  return loop_->run_round();
}

std::vector<LaneInfo> Runtime::lanes() const {
  std::vector<LaneInfo> out;
  for (const auto& lane : lanes_) out.push_back({lane->index(), lane->kind(), lane->device()});
  return out;
}

}  // namespace gpulanes
