// Runtime: models coming and going. Registering before start() only records the model; while
// serving, adding or removing one builds new lanes for the changed layout while the current
// lanes keep serving, then swaps them in as set_lanes() does (runtime/lanes.cpp).
#include <torch/script.h>

#include <algorithm>
#include <chrono>
#include <thread>

#include "gpulanes/core/error.h"
#include "gpulanes/core/serving_thread.h"
#include "gpulanes/runtime/runtime.h"

namespace gpulanes {

void Runtime::add_model_state(int m, const ModelSpec& spec) {
  auto queue = std::make_unique<RequestQueue>(spec.max_queue, policy_->queue_order());
  auto metrics = std::make_unique<ModelMetrics>(spec.name);
  auto rate = std::make_unique<ArrivalRate>();
  if (m == static_cast<int>(queues_.size())) {
    queues_.push_back(std::move(queue));
    metrics_.push_back(std::move(metrics));
    rates_.push_back(std::move(rate));
    if (shape_) shape_->add_model(spec.slo);
    if (replanner_) replanner_->add_model();
    return;
  }
  // A reused slot: nothing of the model that had it may carry over.
  queues_[m] = std::move(queue);
  metrics_[m] = std::move(metrics);
  rates_[m] = std::move(rate);
  if (shape_) shape_->reset_model(m, spec.slo);
  if (replanner_) replanner_->reset_model(m);
  if (admission_) admission_->forget(m);
  policy_->forget(m);
}

int Runtime::stage_model(const std::function<int()>& stage) {
  const int slot = models_.next_slot();
  if (slot >= models_.staged_size()) {
    const int m = stage();
    // The new lanes measure its profile into these; only this thread reads their size.
    // (Reserved: appending moves no profile another thread is reading.)
    profiles_.emplace_back();
    profile_origins_.emplace_back();
    return m;
  }
  // A released slot: the planner thread and other callers read retired slots' specs and
  // profiles under these locks (order: control_mu_, plan_mu_, submit_mu_).
  std::lock_guard<std::mutex> planning(plan_mu_);
  std::unique_lock<std::shared_mutex> writing(submit_mu_);
  if (options_.trace) trace_.alias(slot, models_.at(slot).spec.name);
  const int m = stage();
  std::lock_guard<std::mutex> measured(partition_mu_);
  profiles_[m] = LatencyProfile();
  profile_origins_[m] = ProfileOrigin{};
  std::erase_if(partition_profiles_, [m](const auto& kv) { return kv.first.first == m; });
  if (m < static_cast<int>(plan_profiles_.size())) plan_profiles_[m].reset();
  return m;
}

void Runtime::unstage_model(int m) {
  if (models_.staged() != m) return;  // committed
  if (m == models_.staged_size() - 1 && m >= models_.size()) {
    profile_origins_.pop_back();
    profiles_.pop_back();
  }
  models_.drop_staged();
}

int Runtime::register_model(ModelSpec spec, torch::jit::Module module,
                            std::vector<at::Tensor> example) {
  return register_model(std::move(spec), torchscript_program(std::move(module)), std::move(example));
}

int Runtime::register_model(ModelSpec spec, std::shared_ptr<const ModelProgram> program,
                            std::vector<at::Tensor> example) {
  std::unique_lock<std::mutex> lock(control_mu_);
  if (shut_down_) throw Error(ErrorCode::kRuntimeClosed, "runtime was shut down");
  if (started_) {
    Orphans orphans;
    const int m = register_live(std::move(spec), std::move(program), std::move(example), orphans);
    lock.unlock();
    fail_orphans(std::move(orphans));  // none expected: every model stays served
    return m;
  }
  const int idx = stage_model([&] {
    return models_.stage(std::move(spec), std::move(program), std::move(example));
  });
  std::unique_lock<std::shared_mutex> registering(submit_mu_);
  add_model_state(idx, models_.at(idx).spec);
  models_.commit_staged();
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
  const int idx = stage_model([&] { return models_.stage_virtual(std::move(spec)); });
  std::unique_lock<std::shared_mutex> registering(submit_mu_);
  add_model_state(idx, models_.at(idx).spec);
  models_.commit_staged();
  return idx;
}

int Runtime::register_live(ModelSpec spec, std::shared_ptr<const ModelProgram> program,
                           std::vector<at::Tensor> example,
                           Orphans& orphans) {
  if (options_.device == "virtual") {
    throw Error(ErrorCode::kInvalidInput, "on virtual time, register models before start()");
  }
  const int m = stage_model([&] {
    return models_.stage(std::move(spec), std::move(program), std::move(example));
  });
  const ModelSpec& s = models_.at(m).spec;
  std::vector<LaneSpec> layout = layout_.empty() ? default_layout() : layout_;
  for (LaneSpec& lane : layout) {
    if (!lane.models.empty()) lane.models.push_back(s.name);  // empty: every model already
  }
  if (changes_in_place()) {
    try {
      register_in_place(m, orphans);
    } catch (...) {
      unstage_model(m);  // not committed: as if never added
      throw;
    }
    if (!layout_.empty()) layout_ = std::move(layout);
    return m;
  }
  std::vector<std::unique_ptr<Lane>> old;
  try {
    std::vector<std::unique_ptr<Lane>> fresh = make_lanes(layout);
    start_lanes(fresh, nullptr);  // loads and warms up every model, profiles the new one
    // The planner thread must not plan between the commit and its own model count's growth;
    // taken before the pause so that a plan being computed never holds up serving.
    std::lock_guard<std::mutex> planning(plan_mu_);
    loop_->pause_until_idle();
    old = install_lanes(std::move(fresh), orphans, [&] {
      // Under the loop's lock and submit_mu_, lanes idle: the loop and the policies walk the
      // queues by the vector's size, submitters index metrics and rates.
      add_model_state(m, s);
      models_.commit_staged();
    });
  } catch (...) {
    unstage_model(m);  // not committed: as if never added
    throw;
  }
  if (!layout_.empty()) layout_ = std::move(layout);
  for (auto& lane : old) lane->stop();
  return m;
}

void Runtime::unregister_model(const std::string& name, bool drain) {
  if (serving_runtime() == this) {
    throw Error(ErrorCode::kInvalidInput,
                "unregister() cannot be called on one of this runtime's own threads (a "
                "done-callback): it waits for them");
  }
  Orphans orphans;
  std::vector<RequestPtr> dropped;
  int m = -1;
  {
    std::lock_guard<std::mutex> lock(control_mu_);
    if (shut_down_) throw Error(ErrorCode::kRuntimeClosed, "runtime was shut down");
    m = models_.find(name);
    if (m < 0) throw Error(ErrorCode::kUnknownModel, "no model named '" + name + "' is registered");
    if (started_ && options_.device == "virtual") {
      throw Error(ErrorCode::kInvalidInput, "on virtual time, models stay until shutdown");
    }
    {
      // Submitters hold it shared from lookup to push: none is half way through for `m` after.
      std::unique_lock<std::shared_mutex> writing(submit_mu_);
      models_.retire(m);
      if (!started_) {  // nothing queued or loaded yet; start() builds no lane for it
        layout_ = layout_without(name);
        models_.release(m);
        return;
      }
      if (!drain) dropped = queues_[m]->pop_up_to(queues_[m]->size());
    }
    if (!dropped.empty()) {
      fail(std::move(dropped), ErrorCode::kRuntimeClosed,
           "model '" + name + "' was unregistered (drain=False) before this request ran");
    }
    // Queued requests run (or miss their deadlines) as usual; none can join them now. Counted
    // before their completions run: those are waited for below.
    while (metrics_[m]->in_flight() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (!(changes_in_place() && unregister_in_place(m, name, orphans))) {
      // New lanes without it free what the old ones loaded for it once they stop.
      std::vector<LaneSpec> layout = layout_without(name);
      std::vector<std::unique_ptr<Lane>> fresh =
          make_lanes(layout.empty() ? default_layout() : layout);
      start_lanes(fresh, nullptr);
      std::lock_guard<std::mutex> planning(plan_mu_);
      loop_->pause_until_idle();
      std::vector<std::unique_ptr<Lane>> old = install_lanes(std::move(fresh), orphans);
      if (!layout_.empty()) layout_ = std::move(layout);
      for (auto& lane : old) lane->stop();
    }
  }
  fail_orphans(std::move(orphans));  // none expected: the others keep their lanes
  // Completions of its requests have run: lanes call them before going idle, the delivery
  // thread once it flushed.
  if (deliverer_) deliverer_->flush();
  // Nothing refers to its index any more: a later registration may take the slot.
  std::lock_guard<std::mutex> lock(control_mu_);
  models_.release(m);
}

std::vector<LaneSpec> Runtime::layout_without(const std::string& name) const {
  // A lane left with no model would serve every model (an empty list): it goes instead.
  std::vector<LaneSpec> out;
  for (LaneSpec lane : layout_) {
    const auto at = std::find(lane.models.begin(), lane.models.end(), name);
    if (at == lane.models.end()) {
      out.push_back(std::move(lane));
    } else if (lane.models.size() > 1) {
      lane.models.erase(at);
      out.push_back(std::move(lane));
    }
  }
  return out;
}

}  // namespace gpulanes
