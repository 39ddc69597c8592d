// Runtime: adding and removing one model while serving without building new lanes. Where every
// lane's executor takes live loads (CPU thread lanes), the new model is loaded, warmed up and
// measured on the serving lanes beside the models they keep serving, then the lanes' served
// sets change under the event loop's pause (one batch long); removing a model changes the sets
// and unloads its instances. No other model is loaded again and no lane is rebuilt.
#include <algorithm>

#include "gpulanes/exec/lane.h"
#include "gpulanes/runtime/runtime.h"

namespace gpulanes {
namespace {

WorkerLane* worker_lane(const std::unique_ptr<Lane>& lane) {
  return dynamic_cast<WorkerLane*>(lane.get());
}

}  // namespace

bool Runtime::changes_in_place() const {
  if (options_.layout_changes != "incremental" || lanes_.empty()) return false;
  return std::all_of(lanes_.begin(), lanes_.end(), [](const std::unique_ptr<Lane>& lane) {
    return worker_lane(lane) && lane->executor() && lane->executor()->live_loads();
  });
}

std::vector<std::unique_ptr<Lane>> Runtime::keep_lanes(const std::vector<Lane*>& order,
                                                       std::vector<std::unique_ptr<Lane>> fresh,
                                                       Orphans& orphans,
                                                       const std::function<void()>& change) {
  std::vector<std::unique_ptr<Lane>> gone;
  // Submitters wait here for a moment; lock order submit_mu_ -> loop, as in submit().
  std::unique_lock<std::shared_mutex> writing(submit_mu_);
  loop_->swap_lanes(order, [&] {
    change();
    const bool same = fresh.empty() && order.size() == lanes_.size() &&
                      std::equal(order.begin(), order.end(), lanes_.begin(),
                                 [](Lane* a, const std::unique_ptr<Lane>& b) { return a == b.get(); });
    for (auto& lane : fresh) lanes_.push_back(std::move(lane));
    std::vector<std::unique_ptr<Lane>> next;
    for (Lane* lane : order) {
      auto it = std::find_if(lanes_.begin(), lanes_.end(),
                             [&](const std::unique_ptr<Lane>& l) { return l.get() == lane; });
      next.push_back(std::move(*it));
    }
    for (auto& lane : lanes_) {
      if (lane) gone.push_back(std::move(lane));
    }
    lanes_ = std::move(next);
    if (!same) {  // lanes came, went or moved: per-lane statistics restart, as after a rebuild
      lane_metrics_.clear();
      for (auto& lane : lanes_) {
        lane_metrics_.push_back(std::make_unique<LaneMetrics>(lane->index(), lane->kind(), lane->device()));
      }
    }
    build_profile_book();
    // What is queued for a model no lane serves now would never run; submit refuses new ones.
    for (int m = 0; m < models_.size(); ++m) {
      if (book_.served(m) || queues_[m]->size() == 0) continue;
      orphans.emplace_back(m, queues_[m]->pop_up_to(queues_[m]->size()));
    }
  });
  return gone;
}

void Runtime::register_in_place(int m, Orphans& orphans) {
  // Every lane serves the new model (an explicit layout gets it on each lane, as a rebuild
  // would). Its profile is measured on the first lane, while every lane keeps serving.
  std::vector<Lane*> loaded;
  try {
    for (std::size_t l = 0; l < lanes_.size(); ++l) {
      int done = 0;
      prepare_model(*lanes_[l], m, l == 0 ? kMeasureDefault : 0, nullptr, done, 0);
      loaded.push_back(lanes_[l].get());
    }
  } catch (...) {
    for (Lane* lane : loaded) lane->executor()->unload(m);
    throw;
  }
  std::vector<Lane*> kept;
  for (auto& lane : lanes_) kept.push_back(lane.get());
  const ModelSpec& spec = models_.at(m).spec;
  // The planner thread must not plan between the commit and its own model count's growth;
  // taken before the pause so that a plan being computed never holds up serving.
  std::lock_guard<std::mutex> planning(plan_mu_);
  loop_->pause_until_idle();
  keep_lanes(kept, {}, orphans, [&] {
    // Under the loop's lock and submit_mu_, lanes idle: the loop and the policies walk the
    // queues by the vector's size, submitters index metrics and rates.
    add_model_state(m, spec);
    models_.commit_staged();
    for (auto& lane : lanes_) {
      WorkerLane* w = worker_lane(lane);
      std::vector<char> serves = w->serves_list();
      if (serves.empty()) continue;  // every model: this one too
      serves.resize(std::max<std::size_t>(serves.size(), m + 1), 0);
      serves[m] = 1;
      w->relocate(w->index(), std::move(serves));
    }
  });
}

bool Runtime::unregister_in_place(int m, const std::string& name, Orphans& orphans) {
  // An explicit layout names each lane's models: a lane left with none goes. The default layout
  // keeps its lanes (they serve every model still in use).
  const bool explicit_layout = !layout_.empty();
  if (explicit_layout && layout_.size() != lanes_.size()) return false;  // not built from it
  std::vector<Lane*> kept;
  std::vector<std::vector<char>> serves;
  for (std::size_t l = 0; l < lanes_.size(); ++l) {
    std::vector<char> s = worker_lane(lanes_[l])->serves_list();
    const bool every = s.empty();  // its spec names no model: it stays, as layout_without() says
    if (every) {  // now every model in use, which this one no longer is
      s.assign(models_.staged_size(), 0);
      for (int i = 0; i < models_.staged_size(); ++i) s[i] = models_.in_use(i) ? 1 : 0;
    }
    if (m < static_cast<int>(s.size())) s[m] = 0;
    const bool left = std::any_of(s.begin(), s.end(), [](char c) { return c != 0; });
    if (explicit_layout && !every && !left) continue;
    kept.push_back(lanes_[l].get());
    serves.push_back(std::move(s));
  }
  if (kept.empty()) return false;  // the layout is left empty: the default one is built instead
  std::vector<std::unique_ptr<Lane>> gone;
  {
    std::lock_guard<std::mutex> planning(plan_mu_);
    loop_->pause_until_idle();
    gone = keep_lanes(kept, {}, orphans, [&] {
      for (std::size_t k = 0; k < kept.size(); ++k) {
        dynamic_cast<WorkerLane*>(kept[k])->relocate(static_cast<int>(k), std::move(serves[k]));
      }
    });
  }
  if (explicit_layout) layout_ = layout_without(name);
  for (auto& lane : gone) lane->stop();
  // The kept lanes get no batch of it any more; their instances of it go now.
  for (Lane* lane : kept) lane->executor()->unload(m);
  return true;
}

bool Runtime::set_lanes_in_place(const std::vector<LaneSpec>& layout, Orphans& orphans) {
  if (!changes_in_place()) return false;
  for (const LaneSpec& spec : layout) {
    if (spec.device != "cpu") return false;  // GPU lanes are built anew (for now)
  }
  // What each new lane serves, as make_lanes() sets it (by index; empty: every model).
  bool any_retired = false;
  for (int m = 0; m < models_.staged_size(); ++m) any_retired = any_retired || !models_.in_use(m);
  std::vector<std::vector<char>> want;
  for (const LaneSpec& spec : layout) {
    std::vector<char> w;
    if (!spec.models.empty() || any_retired) {
      w.assign(models_.staged_size(), 0);
      for (int m = 0; spec.models.empty() && m < models_.staged_size(); ++m) w[m] = models_.in_use(m);
    }
    for (const std::string& name : spec.models) {
      const int m = models_.find(name);
      if (m < 0) throw Error(ErrorCode::kUnknownModel, "lane layout names unknown model '" + name + "'");
      w[m] = 1;
    }
    want.push_back(std::move(w));
  }
  auto wants = [&](std::size_t i, int m) {
    return want[i].empty() ? models_.in_use(m) : (m < static_cast<int>(want[i].size()) && want[i][m]);
  };
  // Each new lane keeps the old lane that already holds the most of its models (none is loaded
  // twice); the rest are new lanes.
  std::vector<int> match(layout.size(), -1);
  std::vector<char> taken(lanes_.size(), 0);
  for (std::size_t i = 0; i < layout.size(); ++i) {
    int best = -1, best_overlap = -1;
    for (std::size_t l = 0; l < lanes_.size(); ++l) {
      if (taken[l]) continue;
      int overlap = 0;
      for (int m = 0; m < models_.size(); ++m) overlap += wants(i, m) && lanes_[l]->serves(m);
      if (overlap > best_overlap) best = static_cast<int>(l), best_overlap = overlap;
    }
    if (best >= 0) match[i] = best, taken[best] = 1;
  }
  std::vector<LaneSpec> extra;
  for (std::size_t i = 0; i < layout.size(); ++i) {
    if (match[i] < 0) extra.push_back(layout[i]);
  }
  // New lanes load, warm up and measure their models on their own threads; kept lanes warm up
  // what they gain (its profile exists) on this one. Both while every current lane serves.
  std::vector<std::unique_ptr<Lane>> fresh;
  if (!extra.empty()) {
    fresh = make_lanes(extra);
    start_lanes(fresh, nullptr);
  }
  std::vector<std::pair<Lane*, int>> gained;
  std::vector<std::pair<Lane*, int>> lost;
  try {
    for (std::size_t i = 0; i < layout.size(); ++i) {
      if (match[i] < 0) continue;
      Lane& lane = *lanes_[match[i]];
      for (int m = 0; m < models_.size(); ++m) {
        if (!models_.in_use(m)) continue;
        if (wants(i, m) && !lane.serves(m)) {
          int done = 0;
          prepare_model(lane, m, 0, nullptr, done, 0);
          gained.emplace_back(&lane, m);
        } else if (!wants(i, m) && lane.serves(m)) {
          lost.emplace_back(&lane, m);
        }
      }
    }
  } catch (...) {
    for (auto& [lane, m] : gained) lane->executor()->unload(m);
    for (auto& lane : fresh) lane->stop();
    throw;
  }
  std::vector<Lane*> order;
  for (std::size_t i = 0, k = 0; i < layout.size(); ++i) {
    order.push_back(match[i] >= 0 ? lanes_[match[i]].get() : fresh[k++].get());
  }
  loop_->pause_until_idle();
  std::vector<std::unique_ptr<Lane>> gone = keep_lanes(order, std::move(fresh), orphans, [&] {
    for (std::size_t i = 0; i < order.size(); ++i) {
      dynamic_cast<WorkerLane*>(order[i])->relocate(static_cast<int>(i), want[i]);
    }
  });
  for (auto& lane : gone) lane->stop();
  for (auto& [lane, m] : lost) lane->executor()->unload(m);
  return true;
}

}  // namespace gpulanes
