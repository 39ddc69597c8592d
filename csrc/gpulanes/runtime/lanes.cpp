// Runtime: creating lanes (default layout or a LaneSpec layout), loading and warming up models on
// them, measuring latency profiles, the ProfileBook and predictor that depend on the layout, and
// replacing the layout while serving.
#include <torch/script.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "gpulanes/core/error_text.h"
#include "gpulanes/exec/batching.h"
#include "gpulanes/exec/executor.h"
#include "gpulanes/exec/green_context.h"
#include "gpulanes/exec/mps.h"
#include "gpulanes/core/error.h"
#include "gpulanes/core/serving_thread.h"
#include "gpulanes/core/string_tensor.h"
#include "gpulanes/runtime/runtime.h"

namespace gpulanes {

namespace {

// -1 for "cpu", N for "cuda:N"; throws for anything else or a GPU this machine does not have.
int parse_device(const std::string& dev, int gpus) {
  if (dev == "cpu") return -1;
  int d = -1;
  if (dev.rfind("cuda:", 0) == 0) {
    try {
      d = std::stoi(dev.substr(5));
    } catch (const std::exception&) {
    }
  }
  if (d < 0) throw Error(ErrorCode::kInvalidInput, "unknown lane device '" + dev + "' (use 'cpu' or 'cuda:N')");
  if (d >= gpus) {
    throw Error(ErrorCode::kInvalidInput, "device '" + dev + "' not available (" +
                                              std::to_string(gpus) + " CUDA GPU(s))");
  }
  return d;
}

}  // namespace

bool Runtime::on_cpu() const {
  return options_.device == "cpu" || (options_.device == "auto" && cuda_device_count() == 0);
}

void Runtime::create_lanes() {
  const std::string& dev = options_.device;
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
    return;
  }
  lanes_ = make_lanes(layout_.empty() ? default_layout() : layout_);
}

std::vector<LaneSpec> Runtime::default_layout() const {
  const std::string& dev = options_.device;
  std::vector<LaneSpec> layout;
  const int gpus = cuda_device_count();
  if (on_cpu()) {
    layout.assign(options_.cpu_lanes, LaneSpec{"cpu", 0, {}});
  } else if (dev == "cuda" || dev == "auto") {
    if (gpus == 0) throw Error(ErrorCode::kInvalidInput, "device='cuda' but no usable CUDA GPU");
    for (int d = 0; d < gpus; ++d) layout.push_back({"cuda:" + std::to_string(d), 0, {}});
  } else if (dev.rfind("cuda:", 0) == 0) {
    layout.push_back({dev, 0, {}});
  } else {
    throw Error(ErrorCode::kInvalidInput,
                "unknown device '" + dev + "' (use 'auto', 'cpu', 'cuda' or 'cuda:N')");
  }
  return layout;
}

std::vector<std::unique_ptr<Lane>> Runtime::make_lanes(const std::vector<LaneSpec>& layout) {
  const int gpus = cuda_device_count();
  const std::string& how = options_.partitioning;
  // Per GPU: the lanes on it, and a green partition when they split its SMs.
  std::map<int, std::vector<std::size_t>> on_gpu;
  for (std::size_t i = 0; i < layout.size(); ++i) {
    const int d = parse_device(layout[i].device, gpus);
    if (d >= 0) on_gpu[d].push_back(i);
  }
  const bool process = options_.isolation == "process";
  if (process && how == "green" && !on_gpu.empty()) {
    throw Error(ErrorCode::kInvalidInput,
                "isolation='process' splits a GPU with MPS (partitioning 'mps' or 'auto'); green "
                "contexts partition one process only");
  }
  std::set<int> mps_gpus;  // GPUs whose lanes are MPS clients
  // Every GPU's layout is checked against its split before any partition is built, so a layout
  // that does not fit is refused whole, with what would fit.
  std::map<int, std::vector<int>> split_gpus;  // GPU -> SMs asked by its lanes, in lane order
  for (const auto& [d, lanes] : on_gpu) {
    const int total = cuda_sm_count(d);
    std::vector<int> asked;
    for (std::size_t i : lanes) asked.push_back(layout[i].sms);
    const bool split = std::any_of(asked.begin(), asked.end(), [&](int s) { return s != 0 && s != total; });
    if (how == "none" && (lanes.size() > 1 || split)) {
      throw Error(ErrorCode::kInvalidInput, "partitioning 'none' runs one whole-GPU lane per GPU");
    }
    if (how == "mps" || (how == "auto" && process && split)) {
      mps_gpus.insert(d);
      continue;
    }
    const bool use_green = split && !process &&
                           (how == "green" || (how == "auto" && green_context_support(d).empty()));
    if (!use_green) continue;
    if (std::any_of(asked.begin(), asked.end(), [](int s) { return s <= 0; })) {
      throw Error(ErrorCode::kInvalidInput, "when lanes split cuda:" + std::to_string(d) +
                                                ", every lane on it needs its 'sms'");
    }
    green_groups_for(green_sm_split(d), asked, "cuda:" + std::to_string(d));
    split_gpus[d] = std::move(asked);
  }
  std::map<std::size_t, std::pair<std::shared_ptr<GreenPartition>, int>> green;  // lane -> group
  for (const auto& [d, asked] : split_gpus) {
    auto partition = std::make_shared<GreenPartition>(d, asked);
    const auto& lanes = on_gpu[d];
    for (std::size_t k = 0; k < lanes.size(); ++k) green[lanes[k]] = {partition, static_cast<int>(k)};
  }
  std::vector<std::unique_ptr<Lane>> out;
  for (std::size_t li = 0; li < layout.size(); ++li) {
    const LaneSpec& spec = layout[li];
    LanePlacement where;
    where.device = parse_device(spec.device, gpus);
    if (spec.models.empty()) {
      // Every model: listed once one was unregistered, which the list leaves out.
      bool any_retired = false;
      for (int m = 0; m < models_.staged_size(); ++m) any_retired = any_retired || !models_.in_use(m);
      for (int m = 0; any_retired && m < models_.staged_size(); ++m) {
        where.serves.push_back(models_.in_use(m));
      }
    } else {
      where.serves.assign(models_.staged_size(), 0);
      for (const std::string& name : spec.models) {
        int m = models_.find(name);
        if (m < 0 && models_.staged() >= 0 && models_.at(models_.staged()).spec.name == name) {
          m = models_.staged();  // the model register_live() is adding
        }
        if (m < 0) throw Error(ErrorCode::kUnknownModel, "lane layout names unknown model '" + name + "'");
        where.serves[m] = 1;
      }
    }
    const int index = static_cast<int>(out.size());
    if (where.device < 0) {
      if (spec.sms != 0) throw Error(ErrorCode::kInvalidInput, "CPU lanes have no SMs to set");
      std::unique_ptr<Executor> executor =
          process ? make_process_executor(process_options(-1)) : make_cpu_executor();
      out.push_back(std::make_unique<WorkerLane>(index, process ? "cpu-process" : "cpu",
                                                 std::move(executor), *clock_,
                                                 from_us(options_.spin_us), std::move(where)));
      continue;
    }
    where.device_sms = cuda_sm_count(where.device);
    if (spec.sms < 0 || spec.sms > where.device_sms) {
      throw Error(ErrorCode::kInvalidInput, "lane with " + std::to_string(spec.sms) + " SMs on " +
                                                spec.device + ", which has " +
                                                std::to_string(where.device_sms));
    }
    if (process || mps_gpus.count(where.device)) {
      // A worker process on the GPU; under MPS its share of the SMs is its active-thread
      // percentage (gpu-let's mechanism), rounded up so that it gets at least what it asked.
      ProcessOptions po = process_options(where.device);
      std::string kind = "cuda-process";
      where.sms = where.device_sms;
      if (mps_gpus.count(where.device)) {
        std::shared_ptr<MpsDaemon> daemon = mps_daemon_.lock();
        if (!daemon) {
          daemon = MpsDaemon::acquire();
          mps_daemon_ = daemon;
        }
        po.mps = daemon;
        where.sms = spec.sms > 0 ? spec.sms : where.device_sms;
        po.thread_percentage = std::clamp(
            static_cast<int>(std::ceil(100.0 * where.sms / where.device_sms - 1e-9)), 1, 100);
        kind = "cuda-mps";
      }
      out.push_back(std::make_unique<WorkerLane>(index, kind, make_process_executor(po), *clock_,
                                                 from_us(options_.spin_us), std::move(where)));
      continue;
    }
    void* stream = nullptr;
    std::string kind = "cuda-stream";
    where.sms = where.device_sms;  // a plain stream may use every SM
    if (auto it = green.find(li); it != green.end()) {
      const auto& [partition, group] = it->second;
      stream = partition->stream(group);
      where.sms = partition->sms(group);  // what the driver granted
      where.partition = partition;
      kind = "cuda-green";
    }
    out.push_back(std::make_unique<WorkerLane>(
        index, kind, make_cuda_stream_executor(where.device, options_.outputs_on_device, stream),
        *clock_, from_us(options_.spin_us), std::move(where)));
  }
  if (out.empty()) throw Error(ErrorCode::kInvalidInput, "a lane layout needs at least one lane");
  return out;
}

ProcessOptions Runtime::process_options(int device) const {
  ProcessOptions po{options_.worker_path, static_cast<DurationNs>(options_.worker_watchdog_s * 1e9),
                    options_.worker_max_restarts, 0, from_us(options_.worker_spin_us),
                    options_.worker_libraries,
                    static_cast<DurationNs>(options_.worker_retry_after_s * 1e9)};
  po.device = device;
  po.start_timeout_ns = static_cast<DurationNs>(options_.worker_start_timeout_s * 1e9);
  po.outputs_on_device = device >= 0 && options_.outputs_on_device;
  return po;
}

void Runtime::start_lanes(std::vector<std::unique_ptr<Lane>>& lanes, const ProgressFn& progress) {
  // Each missing profile is measured once: the model's own (kMeasureDefault) on the first
  // whole-device lane that serves it (else its first lane), and one per SM count of the GPU
  // partitions that serve it (kMeasurePartition), each on the first such lane.
  std::vector<std::vector<char>> measure(lanes.size(), std::vector<char>(models_.staged_size(), 0));
  for (int m = 0; m < models_.staged_size(); ++m) {
    std::size_t first = lanes.size();
    for (std::size_t l = 0; l < lanes.size(); ++l) {
      if (!lanes[l]->serves(m) || !lanes[l]->executor()) continue;
      if (first == lanes.size() || (lanes[first]->sm_share() < 1 && lanes[l]->sm_share() >= 1)) first = l;
    }
    if (first == lanes.size()) continue;
    if (profiles_[m].empty()) {
      // Served by partition lanes only: a known profile of the first one's size is the model's.
      std::lock_guard<std::mutex> lock(partition_mu_);
      const Lane& lane = *lanes[first];
      auto known = partition_profiles_.find({m, lane.sms()});
      if (lane.sm_share() < 1 && known != partition_profiles_.end()) {
        profiles_[m] = known->second;
        profile_origins_[m] = ProfileOrigin{lane.kind(), lane.sms(), lane.sm_share()};
      } else {
        measure[first][m] |= kMeasureDefault;
      }
    }
    std::set<int> planned;
    for (std::size_t l = 0; l < lanes.size(); ++l) {
      Lane& lane = *lanes[l];
      if (!lane.serves(m) || !lane.executor() || lane.sm_share() >= 1) continue;
      std::lock_guard<std::mutex> lock(partition_mu_);
      if (partition_profiles_.count({m, lane.sms()}) || !planned.insert(lane.sms()).second) continue;
      measure[l][m] |= kMeasurePartition;
    }
  }
  try {
    for (std::size_t l = 0; l < lanes.size(); ++l) {
      Lane* lane = lanes[l].get();
      std::function<void()> init;
      if (lane->executor()) {
        init = [this, lane, &measure, l, &progress] {
          mark_serving_thread(this);
          prepare_lane(*lane, measure[l], progress);
        };
      }
      lane->start(static_cast<LaneListener*>(this), init);
    }
  } catch (...) {
    for (auto& lane : lanes) lane->stop();
    throw;
  }
}

void Runtime::set_lanes(std::vector<LaneSpec> layout) {
  Orphans orphans;
  {
    std::lock_guard<std::mutex> lock(control_mu_);
    if (shut_down_) throw Error(ErrorCode::kRuntimeClosed, "runtime was shut down");
    if (options_.device == "virtual") {
      throw Error(ErrorCode::kInvalidInput, "device 'virtual' takes its lanes from its backend");
    }
    if (!started_) {
      make_lanes(layout);  // validates now rather than at start()
      layout_ = std::move(layout);
      return;
    }
    if (set_lanes_in_place(layout, orphans)) {
      layout_ = std::move(layout);
    } else {
      std::vector<std::unique_ptr<Lane>> fresh = make_lanes(layout);
      start_lanes(fresh, nullptr);  // warm-up while the old lanes keep serving
      loop_->pause_until_idle();
      std::vector<std::unique_ptr<Lane>> old = install_lanes(std::move(fresh), orphans);
      layout_ = std::move(layout);
      for (auto& lane : old) lane->stop();
    }
  }
  fail_orphans(std::move(orphans));  // no core lock held: their callbacks may call back in
}

std::vector<std::unique_ptr<Lane>> Runtime::install_lanes(std::vector<std::unique_ptr<Lane>> fresh,
                                                          Orphans& orphans,
                                                          const std::function<void()>& first) {
  std::vector<Lane*> order;
  for (auto& lane : fresh) order.push_back(lane.get());
  return keep_lanes(order, std::move(fresh), orphans, first ? first : [] {});
}

void Runtime::fail_orphans(Orphans&& orphans) {
  for (auto& [m, requests] : orphans) {
    fail(std::move(requests), ErrorCode::kOverloaded,
         "model '" + models_.at(m).spec.name +
             "' is no longer served: the new lane layout has no lane for it");
  }
}

namespace {

// `b` copies of each example sample, stacked: a realistic batch for warm-up and profiling.
std::vector<c10::IValue> example_batch(const RegisteredModel& model, int b) {
  std::vector<c10::IValue> batched;
  for (const at::Tensor& sample : model.example) {
    if (is_string_tensor(sample)) {
      batched.emplace_back(stack_strings(std::vector<at::Tensor>(b, sample)));
      continue;
    }
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

void Runtime::prepare_lane(Lane& lane, const std::vector<char>& measure,
                           const ProgressFn& progress) {
  // Loads every model the lane serves onto it and runs it at every profiled batch size: this
  // surfaces broken models at start() instead of on live traffic, checks the output can be split
  // per request, and takes the TorchScript executor's profiling runs out of the serving path.
  // Then measures the latency profiles `measure` asks for.
  int total = 0, done = 0;
  for (int m = 0; m < models_.staged_size(); ++m) {
    if (!lane.serves(m)) continue;
    total += 1 + (measure[m]
                      ? static_cast<int>(profiled_sizes(models_.at(m).spec.max_batch_size).size())
                      : 0);
  }
  for (int m = 0; m < models_.staged_size(); ++m) {
    if (lane.serves(m)) prepare_model(lane, m, measure[m], progress, done, total);
  }
  if (progress) progress(done, total, "ready");
}

void Runtime::prepare_model(Lane& lane, int m, char measure, const ProgressFn& progress,
                            int& done, int total) {
  const RegisteredModel& model = models_.at(m);
  std::string step = "warm-up " + model.spec.name;
  try {
    if (progress) progress(done, total, step);
    lane.executor()->load(m, *model.program);
    model_loads_.fetch_add(1, std::memory_order_relaxed);
    // Every profiled size, also when a profile was given: TorchScript specializes on the
    // shapes it sees, and the first call at a new batch size is slow (a compiled package
    // shows here that it does not take a size the model's max_batch_size allows).
    for (int round = 0; round < std::max(1, options_.warmup_rounds); ++round) {
      for (int b : profiled_sizes(model.spec.max_batch_size)) {
        split_output(lane.executor()->run(m, example_batch(model, b)), static_cast<std::size_t>(b));
      }
    }
    ++done;
    if (!measure) return;  // kMeasureDefault and/or kMeasurePartition
    std::vector<LatencyPoint> points;
    for (int b : profiled_sizes(model.spec.max_batch_size)) {
      step = "profile " + model.spec.name + " batch " + std::to_string(b);
      if (progress) progress(done, total, step);
      points.push_back(measure_batch(lane, m, b));
      ++done;
    }
    std::lock_guard<std::mutex> lock(partition_mu_);
    if (measure & kMeasureDefault) {
      profiles_[m] = LatencyProfile(points);
      const bool part = lane.sm_share() < 1;
      profile_origins_[m] = ProfileOrigin{lane.kind(), part ? lane.sms() : 0, lane.sm_share()};
    }
    if (measure & kMeasurePartition) partition_profiles_[{m, lane.sms()}] = LatencyProfile(points);
  } catch (const std::exception& e) {
    throw Error(ErrorCode::kModelError, "model '" + model.spec.name + "' failed its " + step +
                                            " on " + lane.device() + ": " + error_text(e, 4000));
  }
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
      const LatencyProfile* own = nullptr;
      if (backend_) {
        own = backend_->lane_profile(static_cast<int>(l), m);
      } else if (lanes_[l]->sm_share() < 1) {
        std::lock_guard<std::mutex> lock(partition_mu_);
        auto it = partition_profiles_.find({m, lanes_[l]->sms()});
        if (it != partition_profiles_.end()) own = &it->second;  // the book copies it
      }
      lane_profiles[l].push_back(own);
    }
  }
  book_.build(profiles_, lane_profiles, serves, max_batch);
  std::vector<int> device;
  std::vector<double> share;
  std::vector<std::vector<int>> served(lanes_.size());
  for (std::size_t l = 0; l < lanes_.size(); ++l) {
    device.push_back(lanes_[l]->device_index());
    share.push_back(lanes_[l]->sm_share());
    for (int m = 0; m < n_models; ++m) {
      if (serves[l][m]) served[l].push_back(m);
    }
  }
  // Called on the loop thread, which is the only one that takes requests out of queues.
  auto backlog = [this, served = std::move(served)](int lane) {
    for (int m : served[lane]) {
      if (queues_[m]->size() > 0) return true;
    }
    return false;
  };
  predictor_ = std::make_unique<LatencyPredictor>(options_.predictor, book_, device, share,
                                                  std::move(backlog));
}

void Runtime::pause_dispatch() { loop_->pause(); }

bool Runtime::lanes_idle() const { return loop_->lanes_idle(); }

void Runtime::take_virtual_lanes() {
  if (!backend_ || !loop_) throw Error(ErrorCode::kInvalidInput, "no virtual backend is serving");
  std::vector<std::unique_ptr<Lane>> fresh = backend_->make_lanes(*clock_);
  for (auto& lane : fresh) lane->start(static_cast<LaneListener*>(this), nullptr);
  Orphans orphans;
  install_lanes(std::move(fresh), orphans);  // the old virtual lanes are idle and own nothing
  fail_orphans(std::move(orphans));
}

void* Runtime::lane_stream(int index) const {
  std::shared_lock<std::shared_mutex> lock(submit_mu_);
  if (index < 0 || index >= static_cast<int>(lanes_.size())) {
    throw Error(ErrorCode::kInvalidInput, "no lane " + std::to_string(index));
  }
  Executor* e = lanes_[index]->executor();
  return e ? e->stream_handle() : nullptr;
}

std::vector<LaneInfo> Runtime::lanes() const {
  std::shared_lock<std::shared_mutex> lock(submit_mu_);  // set_lanes() swaps them exclusively
  std::vector<LaneInfo> out;
  for (const auto& lane : lanes_) {
    std::vector<std::string> served;
    for (int m = 0; m < models_.size(); ++m) {
      if (lane->serves(m)) served.push_back(models_.at(m).spec.name);
    }
    LaneInfo info{lane->index(), lane->kind(), lane->device(), lane->sms(), std::move(served)};
    if (const Executor* e = lane->executor()) {
      info.worker_pid = e->worker_pid();
      info.worker_restarts = e->worker_restarts();
      info.broken = e->broken();
      info.mps_thread_percentage = e->mps_thread_percentage();
      info.mps_pipe_dir = e->mps_pipe_dir();
      info.loads = e->loads();
    }
    out.push_back(std::move(info));
  }
  return out;
}

}  // namespace gpulanes
