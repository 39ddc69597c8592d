// The baselines the deadline policy is compared with. None of them knows deadlines: they run a
// request even when it is already late (it then counts as missed), as the systems they model do.
#include <algorithm>
#include <cmath>
#include <unordered_map>

#include "gpulanes/core/check.h"
#include "gpulanes/core/error.h"
#include "gpulanes/sched/policies.h"

namespace gpulanes {

int oldest_head(const SchedulingState& s, int lane) {
  int best = -1;
  TimeNs best_arrival = kNever;
  for (int m : s.profiles.models_of(lane)) {
    if (auto h = s.queues[m]->head(); h && h->arrival < best_arrival) {
      best = m;
      best_arrival = h->arrival;
    }
  }
  return best;
}

namespace {

Batch take(SchedulingState& s, int lane, int m, int n) {
  Batch batch;
  batch.model = m;
  batch.requests = s.queues[m]->pop_up_to(static_cast<std::size_t>(n));
  batch.predicted_ns = s.profiles.predict(m, lane, static_cast<int>(batch.requests.size()));
  return batch;
}

// `fifo`: no batching; requests in arrival order across all models.
class FifoPolicy final : public BatchPolicy {
 public:
  std::string name() const override { return "fifo"; }
  QueueOrder queue_order() const override { return QueueOrder::kArrival; }
  TimeNs expire(SchedulingState&, TimeNs, std::vector<RequestPtr>&) override { return kNever; }
  Batch next_batch(const LaneView& lane, SchedulingState& s, TimeNs, TimeNs*) override {
    const int m = oldest_head(s, lane.index);
    return m < 0 ? Batch{} : take(s, lane.index, m, 1);
  }
};

// `max_delay`: Triton's dynamic batcher (model config `dynamic_batching { ... }`), per model:
// - requests join batches in arrival order;
// - if a batch of a preferred size (preferred_batch_size) can be formed, the largest such batch
//   is sent at once;
// - else a full batch (max_batch_size) is sent at once;
// - else the batcher waits until the oldest request has been queued max_queue_delay_microseconds
//   and then sends the largest batch it can (0 = never waits);
// - a request queued longer than default_timeout_microseconds is rejected (timeout_action
//   REJECT); 0 = no timeout.
// Several models sharing one lane take turns by the arrival of their oldest ready request.
class MaxDelayPolicy final : public BatchPolicy {
 public:
  explicit MaxDelayPolicy(const PolicyConfig& c) : cfg_(c) {
    std::sort(cfg_.preferred_batch_sizes.begin(), cfg_.preferred_batch_sizes.end());
  }
  std::string name() const override { return "max_delay"; }
  QueueOrder queue_order() const override { return QueueOrder::kArrival; }

  TimeNs expire(SchedulingState& s, TimeNs now, std::vector<RequestPtr>& out) override {
    if (cfg_.queue_timeout_ns <= 0) return kNever;
    TimeNs next = kNever;
    for (auto& q : s.queues) {
      auto timed_out = q->pop_while(
          [&](const Request& r) { return r.arrival + cfg_.queue_timeout_ns <= now; });
      for (auto& r : timed_out) out.push_back(std::move(r));
      if (auto h = q->head()) next = std::min(next, h->arrival + cfg_.queue_timeout_ns);
    }
    return next;
  }

  Batch next_batch(const LaneView& lane, SchedulingState& s, TimeNs now, TimeNs* wake_at) override {
    int best = -1, best_size = 0;
    TimeNs best_arrival = kNever;
    for (int m : s.profiles.models_of(lane.index)) {
      auto h = s.queues[m]->head();
      if (!h) continue;
      const int max_batch = s.models.at(m).spec.max_batch_size;
      const int cap = std::min(static_cast<int>(s.queues[m]->size()), max_batch);
      int size = 0;
      for (int p : cfg_.preferred_batch_sizes) {
        if (p <= cap) size = p;
      }
      if (size == 0 && (cap == max_batch || now >= h->arrival + cfg_.max_queue_delay_ns)) {
        size = cap;
      }
      if (size == 0) {
        *wake_at = std::min(*wake_at, h->arrival + cfg_.max_queue_delay_ns);
        continue;
      }
      if (h->arrival < best_arrival) {
        best = m;
        best_size = size;
        best_arrival = h->arrival;
      }
    }
    return best < 0 ? Batch{} : take(s, lane.index, best, best_size);
  }

 private:
  PolicyConfig cfg_;
};

// `aimd`: Clipper's adaptive batching. Each model has a batch cap that grows by aimd_increase
// after a batch that finished within the model's SLO and is multiplied by aimd_decrease (0.9: a
// 10% back-off) after one that did not. Requests go in arrival order, without waiting.
class AimdPolicy final : public BatchPolicy {
 public:
  explicit AimdPolicy(const PolicyConfig& c) : cfg_(c) {}
  std::string name() const override { return "aimd"; }
  QueueOrder queue_order() const override { return QueueOrder::kArrival; }
  TimeNs expire(SchedulingState&, TimeNs, std::vector<RequestPtr>&) override { return kNever; }

  Batch next_batch(const LaneView& lane, SchedulingState& s, TimeNs, TimeNs*) override {
    const int m = oldest_head(s, lane.index);
    if (m < 0) return {};
    const int max_batch = s.models.at(m).spec.max_batch_size;
    int& cap = caps_.try_emplace(m, 1).first->second;
    cap = std::min(cap, max_batch);
    max_batch_[m] = max_batch;
    return take(s, lane.index, m, cap);
  }

  void forget(int model) override {
    caps_.erase(model);
    max_batch_.erase(model);
  }

  void observe(const BatchObservation& obs) override {
    auto it = caps_.find(obs.model);
    if (it == caps_.end()) return;
    int& cap = it->second;
    if (obs.actual_ns <= obs.slo_ns) {
      cap = std::min(cap + cfg_.aimd_increase, max_batch_[obs.model]);
    } else {
      cap = std::max(1, static_cast<int>(std::floor(cap * cfg_.aimd_decrease)));
    }
  }

 private:
  const PolicyConfig cfg_;
  std::unordered_map<int, int> caps_;       // model -> batch cap
  std::unordered_map<int, int> max_batch_;  // model -> its max_batch_size
};

}  // namespace

std::unique_ptr<BatchPolicy> make_fifo_policy(const PolicyConfig&) {
  return std::make_unique<FifoPolicy>();
}
std::unique_ptr<BatchPolicy> make_max_delay_policy(const PolicyConfig& c) {
  return std::make_unique<MaxDelayPolicy>(c);
}
std::unique_ptr<BatchPolicy> make_aimd_policy(const PolicyConfig& c) {
  return std::make_unique<AimdPolicy>(c);
}

void validate(const PolicyConfig& c) {
  constexpr double kMaxUs = 3600e6;  // an hour: anything longer is a unit mistake
  for (int p : c.preferred_batch_sizes) check_int("preferred_batch_size entries", p, 1, 1 << 20);
  check_real("max_queue_delay_microseconds", c.max_queue_delay_ns / 1e3, 0, kMaxUs);
  check_real("default_timeout_microseconds", c.queue_timeout_ns / 1e3, 0, kMaxUs);
  check_int("additive_increase", c.aimd_increase, 1, 1 << 20);
  check_real("multiplicative_decrease", c.aimd_decrease, 0, 1, /*open_lo=*/true);
  check_real("min_margin_us", c.min_margin_ns / 1e3, 0, kMaxUs);
  check_real("margin_quantile", c.margin_quantile, 0, 1, /*open_lo=*/true);
  check_int("margin_window", c.margin_window, 1, 1 << 20);
  check_real("scale_alpha", c.scale_alpha, 0, 1, /*open_lo=*/true);
}

std::unique_ptr<BatchPolicy> make_policy(const std::string& name, const PolicyConfig& config) {
  validate(config);
  if (name == "deadline") return make_deadline_policy(config);
  if (name == "fifo") return make_fifo_policy(config);
  if (name == "max_delay") return make_max_delay_policy(config);
  if (name == "aimd") return make_aimd_policy(config);
  throw Error(ErrorCode::kInvalidInput,
              "unknown policy '" + name + "' (available: deadline, fifo, max_delay, aimd)");
}

}  // namespace gpulanes
