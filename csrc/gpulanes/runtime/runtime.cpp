#include "gpulanes/runtime/runtime.h"

#include <torch/script.h>

#include <algorithm>

#include "gpulanes/exec/batching.h"
#include "gpulanes/exec/executor.h"

namespace gpulanes {

Runtime::Runtime(RuntimeOptions options, std::shared_ptr<Clock> clock)
    : options_(std::move(options)),
      clock_(clock ? std::move(clock) : std::make_shared<SteadyClock>()),
      policy_(make_policy(options_.policy)) {
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
  queues_.push_back(std::make_unique<RequestQueue>(cap));
  metrics_.push_back(std::make_unique<ModelMetrics>(name));
  return idx;
}

void Runtime::set_delivery_hook(DeliveryHook hook) {
  std::lock_guard<std::mutex> lock(control_mu_);
  if (started_) throw Error(ErrorCode::kInvalidInput, "set the delivery hook before start()");
  delivery_hook_ = std::move(hook);
}

void Runtime::create_lanes() {
  const std::string& dev = options_.device;
  const int gpus = cuda_device_count();
  auto add_cuda = [&](int d) {
    lanes_.push_back(std::make_unique<Lane>(static_cast<int>(lanes_.size()), "cuda-stream",
                                            make_cuda_stream_executor(d, options_.outputs_on_device),
                                            *clock_, from_us(options_.spin_us)));
  };
  if (dev == "cpu" || (dev == "auto" && gpus == 0)) {
    for (int i = 0; i < options_.cpu_lanes; ++i) {
      lanes_.push_back(std::make_unique<Lane>(i, "cpu", make_cpu_executor(), *clock_,
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

void Runtime::warm_up(Lane& lane) {
  // Loads every model onto the lane and runs it at batch 1 and max batch: this surfaces broken
  // models at start() instead of on live traffic, checks the output can be split per request,
  // and takes the TorchScript executor's profiling runs out of the serving path.
  for (int m = 0; m < models_.size(); ++m) {
    const RegisteredModel& model = models_.at(m);
    try {
      lane.executor().load(m, *model.module);
      std::vector<int> sizes{1};
      if (model.spec.max_batch_size > 1) sizes.push_back(model.spec.max_batch_size);
      for (int round = 0; round < std::max(1, options_.warmup_rounds); ++round) {
        for (int b : sizes) {
          std::vector<c10::IValue> batched;
          for (const at::Tensor& sample : model.example) {
            std::vector<std::int64_t> reps(sample.dim() + 1, 1);
            reps[0] = b;
            batched.emplace_back(sample.unsqueeze(0).repeat(reps));
          }
          split_output(lane.executor().run(m, std::move(batched)), static_cast<std::size_t>(b));
        }
      }
    } catch (const std::exception& e) {
      throw Error(ErrorCode::kModelError, "model '" + model.spec.name + "' failed its warm-up on " +
                                              lane.device() + ": " + std::string(e.what()).substr(0, 4000));
    }
  }
}

void Runtime::start() {
  std::lock_guard<std::mutex> lock(control_mu_);
  if (shut_down_) throw Error(ErrorCode::kRuntimeClosed, "runtime was shut down");
  if (started_) throw Error(ErrorCode::kInvalidInput, "runtime already started");
  create_lanes();
  std::vector<Lane*> lane_ptrs;
  for (auto& lane : lanes_) lane_ptrs.push_back(lane.get());
  // The loop exists before any lane serves (a lane reports to it), but runs only after all
  // lanes are warm.
  loop_ = std::make_unique<EventLoop>(*clock_, SchedulingState{models_, queues_}, lane_ptrs,
                                      *policy_, static_cast<LoopSink&>(*this));
  try {
    for (auto& lane : lanes_) {
      Lane* l = lane.get();
      lane->start(static_cast<LaneListener*>(this), [this, l] { warm_up(*l); });
    }
  } catch (...) {
    for (auto& lane : lanes_) lane->stop();
    lanes_.clear();
    loop_.reset();
    throw;
  }
  loop_->start();
  started_at_.store(clock_->now(), std::memory_order_release);
  started_ = true;
  accepting_.store(true, std::memory_order_release);
}

void Runtime::submit(const std::string& model, std::vector<at::Tensor> inputs,
                     std::optional<TimeNs> deadline, int priority, CompletionFn done,
                     bool native) {
  // Shared with other submitters; exclusive only while registering or closing, so nothing is
  // pushed after the loop's final drain and no lookup races a registration.
  std::shared_lock<std::shared_mutex> lock(submit_mu_);
  const int m = models_.find(model);
  if (m < 0) throw Error(ErrorCode::kUnknownModel, "no model named '" + model + "' is registered");
  ModelMetrics& metrics = *metrics_[m];
  metrics.on_submitted();
  auto reject = [&](ErrorCode code, const std::string& why) {
    metrics.on_rejected();
    throw Error(code, why);
  };
  if (!accepting_.load(std::memory_order_acquire)) {
    reject(ErrorCode::kRuntimeClosed,
           started_at_.load() ? "runtime is shut down" : "runtime not started; call start() first");
  }
  const ModelSpec& spec = models_.at(m).spec;
  if (priority != 0 && priority != 1) reject(ErrorCode::kInvalidInput, "priority must be 0 or 1");
  try {
    validate_inputs(spec, inputs);
  } catch (const Error&) {
    metrics.on_rejected();
    throw;
  }
  const TimeNs now = clock_->now();
  const TimeNs due = deadline ? *deadline : now + spec.slo;
  if (due <= now) {
    reject(ErrorCode::kDeadlineExceeded, "deadline already passed at submit (" +
                                             std::to_string(to_ms(now - due)) + " ms ago)");
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
  if (!queues_[m]->try_push(req)) {
    req->on_done = nullptr;  // the caller keeps ownership of what `done` captured
    reject(ErrorCode::kQueueFull, "queue of model '" + model + "' is full (max_queue=" +
                                      std::to_string(spec.max_queue) + ")");
  }
  loop_->wake();
}

void Runtime::refuse(const std::string& model, ErrorCode code, const std::string& why) {
  {
    std::shared_lock<std::shared_mutex> lock(submit_mu_);
    const int m = models_.find(model);
    if (m < 0) throw Error(ErrorCode::kUnknownModel, "no model named '" + model + "' is registered");
    metrics_[m]->on_submitted();
    metrics_[m]->on_rejected();
  }
  throw Error(code, why);
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
  ModelMetrics& metrics = *metrics_[batch.model];
  // Metrics first, so a caller woken by its future already sees itself counted.
  for (std::size_t i = 0; i < batch.requests.size(); ++i) {
    const Request& r = *batch.requests[i];
    if (outcomes[i].ok()) {
      metrics.on_result(r.arrival, r.started, report.end, r.deadline);
    } else {
      metrics.on_failure(/*dropped=*/false);
    }
  }
  metrics.on_batch(static_cast<int>(batch.requests.size()), report.exec_ns);
  deliver(batch.requests, outcomes);
  loop_->lane_idle(report.lane);
}

void Runtime::fail(std::vector<RequestPtr>&& requests, ErrorCode code, const std::string& why) {
  for (const auto& r : requests) {
    metrics_[r->model]->on_failure(code == ErrorCode::kDeadlineExceeded);
  }
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

std::vector<LaneInfo> Runtime::lanes() const {
  std::vector<LaneInfo> out;
  for (const auto& lane : lanes_) out.push_back({lane->index(), lane->kind(), lane->device()});
  return out;
}

}  // namespace gpulanes
