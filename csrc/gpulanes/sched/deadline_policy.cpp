// `deadline`: earliest deadline first with deadline-aware adaptive batching.
//
// - Across the models a lane serves, the one whose most urgent request is due first goes first.
// - Its batch is the largest b (up to max_batch_size and the queue) whose predicted completion,
//   now + latency(b) + margin, is at or before the earliest deadline in the batch (the head's).
//   A lone request needs only its expected completion, now + latency(1), in time: the margin
//   guards the decision to add requests to a batch, and refusing to try a request that is
//   expected to make it would turn a likely success into a certain failure.
// - With wait_for_batch (off by default: in the demo it raised latency without raising
//   attainment, see README), if every queued request fits, a batch one larger would still finish in time, and arrivals
//   are still coming (the last one is less than two smoothed gaps old, and the next is due
//   before the larger batch's latest start), the lane waits: until the next arrival, or until
//   two gaps pass without one (the stream has paused), or until the larger batch's latest start
//   less one margin, which keeps one margin of slack for the lane's wake-up. Meanwhile a
//   later-deadline model may use the lane if its batch ends before that time.
// - On a lane shared by several models, a batch larger than one must also (a) take at most half
//   the smallest SLO of the other models, so that any of their requests can wait one batch and
//   still run within its SLO (the gpu-let duty-cycle rule), and (b) end before the latest start
//   of every other model's queued head request.
// - Priorities (0 = latency-critical, the default; 1 = best effort) matter only when both
//   cannot be served: a batch holding best-effort requests may start only if every critical
//   request it leaves queued, on any model of the lane, can still start in time after it
//   (deadline - cost(1)). Otherwise the model's critical requests go alone, if it holds the
//   most urgent one, or the lane serves the model that does; best-effort requests that can then
//   no longer make it are dropped. Without best-effort requests none of this costs anything.
// - Fair share (fair_share, off by default): EDF alone starves the longer-SLO model of a shared
//   lane under overload: the shorter-SLO one always holds the earliest deadline, so the other
//   starts only at its head's latest start, with a batch of one. So each lane keeps the lane time
//   each model used lately (decayed over kShareTau of busy time); when several models are queued
//   and one got less than an even share and its head waited half its SLO, its batch goes
//   first: the largest that meets its head's deadline and takes at most half the smallest other
//   SLO (the duty-cycle rule, so the others' requests can wait one such batch). The result is
//   max-min fair lane time: a model asking less than its share gets what it asks. While a
//   model's batches go first so, admission counts one of them ahead of every other model's
//   request, so what it admits can wait for it. Off by default: it trades requests of the
//   cheaper model for the dearer one's, so total goodput falls (benchmarks/fair_share.py).
// - A request expected to miss even alone (now + latency(1) > deadline) is dropped without
//   running; admission control refuses one that could not make it even on an idle lane. Under
//   overload the most urgent requests are also given up when that lets a batch at least twice
//   as large start in time (give_up_head).
// - Predictions adapt: with a latency predictor (static, ewma, sgd, rls) a batch's latency is
//   the predictor's, from the profile and what runs beside it; without one (none) the profiled
//   latency is scaled by an EWMA of measured/profiled latency of this model's recent batches (the
//   machine under load is slower than when it was profiled idle). The margin is a high quantile
//   (default p99) of the recent errors of that prediction (measured - predicted), never below
//   min_margin_ns.
#include <algorithm>
#include <cmath>
#include <deque>
#include <mutex>
#include <unordered_map>

#include "gpulanes/sched/policies.h"

namespace gpulanes {
namespace {

class DeadlinePolicy final : public BatchPolicy {
 public:
  explicit DeadlinePolicy(const PolicyConfig& config) : cfg_(config) {}

  std::string name() const override { return "deadline"; }
  QueueOrder queue_order() const override { return QueueOrder::kDeadline; }

  TimeNs expire(SchedulingState& s, TimeNs now, std::vector<RequestPtr>& out) override {
    TimeNs next = kNever;
    for (int m = 0; m < static_cast<int>(s.queues.size()); ++m) {
      if (s.queues[m]->size() == 0) continue;
      const DurationNs alone = scaled(m, s.profiles.fastest(m, 1));  // on the fastest lane
      if (alone == kNever) continue;  // no lane serves it (admission refuses such requests)
      auto dropped = s.queues[m]->pop_while(
          [&](const Request& r) { return now + alone > r.deadline; });
      for (auto& r : dropped) out.push_back(std::move(r));
      give_up_head(s, m, now, out);
      if (auto d = s.queues[m]->earliest_deadline()) next = std::min(next, *d - alone + 1);
    }
    return next;
  }

  Batch next_batch(const LaneView& lane, SchedulingState& s, TimeNs now, TimeNs* wake_at) override {
    const int L = lane.index;
    const std::vector<int>& mine = s.profiles.models_of(L);
    const LatencyPredictor* model = s.predictor && s.predictor->active() ? s.predictor.get() : nullptr;
    auto predict = [&](int m, int b) {
      return model ? model->predict(m, L, b, now) : scaled(m, s.profiles.predict(m, L, b));
    };
    auto cost = [&](int m, int b) { return predict(m, b) + margin(m); };
    std::vector<std::pair<TimeNs, int>> order;  // (head deadline, model), most urgent first
    bool best_effort = false;                   // any priority-1 request queued
    for (int m : mine) {
      if (auto d = s.queues[m]->earliest_deadline()) order.emplace_back(*d, m);
      else continue;
      best_effort = best_effort || s.queues[m]->size(1) > 0;
    }
    if (order.empty()) return {};
    // Latest start of each model's most urgent critical request (by model index).
    std::unordered_map<int, TimeNs> critical_start;
    if (best_effort) {
      for (const auto& [d, m] : order) {
        if (auto c = s.queues[m]->deadline_after(0, 0)) critical_start[m] = *c - cost(m, 1);
      }
    }
    auto critical_start_of = [&](int m) {
      auto it = critical_start.find(m);
      return it == critical_start.end() ? kNever : it->second;
    };
    std::sort(order.begin(), order.end());
    if (cfg_.fair_share && order.size() > 1 && !best_effort) {
      if (Batch b = underserved_batch(L, order, s, now, predict, cost); !b.requests.empty()) {
        std::lock_guard<std::mutex> lock(seen_mu_);
        if (static_cast<int>(jumped_at_.size()) <= b.model) jumped_at_.resize(b.model + 1, kNever);
        jumped_at_[b.model] = now;
        return b;
      }
    }
    TimeNs start_by = kNever;  // a more urgent model waits: whatever runs now must end by then
    for (const auto& [head_deadline, m] : order) {
      RequestQueue& q = *s.queues[m];
      const int max_batch = s.models.at(m).spec.max_batch_size;
      // Whatever the batch, it must leave room for the other models on the lane.
      TimeNs others_by = kNever;
      DurationNs others_slo = kNever;
      TimeNs others_critical = kNever;  // latest start of the other models' critical heads
      for (int o : mine) {
        if (o == m) continue;
        others_slo = std::min(others_slo, s.models.at(o).spec.slo);
        if (auto d = s.queues[o]->earliest_deadline()) others_by = std::min(others_by, *d - cost(o, 1));
        others_critical = std::min(others_critical, critical_start_of(o));
      }
      auto fits = [&](int size, TimeNs deadline) {
        const DurationNs c = cost(m, size);
        return now + c <= deadline && (size == 1 || (now + c <= others_by &&
                                                     (others_slo == kNever || 2 * c <= others_slo)));
      };
      // Best-effort requests in a batch of the first `size` may run only if every critical
      // request left queued can still start in time after it.
      auto spares_critical = [&](int size) {
        if (!best_effort || q.count_in_first(static_cast<std::size_t>(size), 1) == 0) return true;
        TimeNs by = others_critical;
        if (auto d = q.deadline_after(static_cast<std::size_t>(size), 0)) by = std::min(by, *d - cost(m, 1));
        return now + cost(m, size) <= by;
      };
      TimeNs deadline = head_deadline;
      int queued = static_cast<int>(q.size());
      int b = std::min(queued, max_batch);
      while (b > 1 && !(fits(b, deadline) && spares_critical(b))) --b;
      bool critical_only = false;
      if (!spares_critical(b)) {
        // Even the best-effort head alone would make critical work late. Serve this model's
        // critical requests without it, if this model holds the most urgent of them.
        const TimeNs own_critical = critical_start_of(m);
        if (own_critical == kNever || own_critical > others_critical) continue;
        critical_only = true;
        deadline = *q.deadline_after(0, 0);
        queued = static_cast<int>(q.size(0));
        b = std::min(queued, max_batch);
        while (b > 1 && !fits(b, deadline)) --b;
      }
      if (b == 1 && now + predict(m, 1) > deadline) continue;
      if (now + cost(m, b) > start_by) continue;
      if (cfg_.wait_for_batch && b == queued && queued < max_batch) {
        // Latest start of a batch one larger, less one margin of slack for waking up.
        const TimeNs latest = deadline - cost(m, queued + 1) - margin(m);
        const DurationNs gap = s.rates[m]->mean_gap();
        if (gap != kNever && now + gap <= latest) {
          const TimeNs paused_at = s.rates[m]->last() + 2 * gap;  // no arrival by then: paused
          if (now <= paused_at) {
            *wake_at = std::min(*wake_at, std::min(latest, paused_at + 1));
            start_by = std::min(start_by, latest);
            continue;
          }
        }
      }
      Batch batch;
      batch.model = m;
      batch.requests = critical_only ? q.pop_up_to(static_cast<std::size_t>(b), 0)
                                     : q.pop_up_to(static_cast<std::size_t>(b));
      batch.predicted_ns = predict(m, b);
      return batch;
    }
    return {};
  }

  void forget(int model) override {
    errors_.erase(model);
    for (std::vector<double>& u : usage_) {
      if (model < static_cast<int>(u.size())) u[model] = 0.0;
    }
    std::lock_guard<std::mutex> lock(seen_mu_);
    if (model < static_cast<int>(seen_.size())) seen_[model] = {1.0, cfg_.min_margin_ns};
    if (model < static_cast<int>(jumped_at_.size())) jumped_at_[model] = kNever;
  }

  void observe(const BatchObservation& obs) override {
    if (cfg_.fair_share && obs.lane >= 0 && obs.model >= 0) {
      if (static_cast<int>(usage_.size()) <= obs.lane) usage_.resize(obs.lane + 1);
      std::vector<double>& u = usage_[obs.lane];
      if (static_cast<int>(u.size()) <= obs.model) u.resize(obs.model + 1, 0.0);
      const double keep = std::exp(-static_cast<double>(obs.actual_ns) / kShareTau);
      for (double& x : u) x *= keep;
      u[obs.model] += static_cast<double>(obs.actual_ns);
    }
    if (obs.predicted_ns <= 0) return;
    Errors& e = errors_[obs.model];
    if (obs.profiled_ns > 0) {
      const double ratio = static_cast<double>(obs.actual_ns) / obs.profiled_ns;
      e.scale += cfg_.scale_alpha * (ratio - e.scale);
    }
    e.window.push_back(obs.actual_ns - obs.predicted_ns);
    if (static_cast<int>(e.window.size()) > cfg_.margin_window) e.window.pop_front();
    std::vector<DurationNs> sorted(e.window.begin(), e.window.end());
    const auto k = std::max<std::size_t>(
                       1, static_cast<std::size_t>(std::ceil(cfg_.margin_quantile * sorted.size()))) - 1;
    std::nth_element(sorted.begin(), sorted.begin() + k, sorted.end());
    e.margin = std::max(cfg_.min_margin_ns, sorted[k]);
    std::lock_guard<std::mutex> lock(seen_mu_);
    if (static_cast<int>(seen_.size()) <= obs.model) seen_.resize(obs.model + 1, {1.0, cfg_.min_margin_ns});
    seen_[obs.model] = {e.scale, e.margin};
  }

  bool admits(const SchedulingState& s, int model, TimeNs now, TimeNs deadline) const override {
    const DurationNs alone = s.profiles.fastest(model, 1);
    return alone != kNever && now + alone <= deadline;
  }

  // The lanes of `m` drain what is queued for their models (critical requests; best-effort ones
  // too for a best-effort request, which goes after them) at each model's largest batch, shared
  // evenly; then the request's own batch runs. Latencies are the profiles' scaled by what the
  // lanes measured lately, plus the safety margin, as the loop predicts them. Refusing here, at
  // once, what would finish late keeps the queue as long as the lanes can serve in time, so
  // under any overload the lanes run full batches that meet their deadlines instead of a
  // backlog that all misses.
  bool has_room(const SchedulingState& s, int m, int priority, TimeNs now, TimeNs deadline,
                std::string* why) const override {
    const std::vector<int>& lanes = s.profiles.lanes_of(m);
    if (!cfg_.queue_admission || lanes.empty()) return true;  // no lane: refused elsewhere
    double work_ns = 0;
    std::size_t ahead = 0, own_queue = 0;
    std::vector<char> counted(s.queues.size(), 0);
    for (int l : lanes) {
      for (int k : s.profiles.models_of(l)) {
        if (counted[k]) continue;
        counted[k] = 1;
        const RequestQueue& q = *s.queues[k];
        std::size_t n = priority == 0 ? q.size(0) : q.size();
        if (n == 0) continue;
        if (k == m) {
          own_queue = n;
        } else if (auto head = q.earliest_deadline()) {
          // EDF: only another model's requests due before this one go first. Their deadlines
          // run from its head's to about now + its SLO (the newest); take them as even.
          const double newest = static_cast<double>(now + s.models.at(k).spec.slo);
          const double span = std::max(1.0, newest - static_cast<double>(*head));
          const std::size_t queued = n;
          n = static_cast<std::size_t>(std::ceil(
              n * std::clamp((static_cast<double>(deadline) - *head) / span, 0.0, 1.0)));
          // While fair share puts its batches first, one (at most half this model's SLO) may
          // run ahead of this request.
          if (cfg_.fair_share && jumped_lately(k, now, s.models.at(k).spec.slo)) {
            n = std::max(n, std::min(queued, duty_batch(s, k, s.models.at(m).spec.slo)));
          }
        }
        const int full = saturated_batch(s, k);
        work_ns += static_cast<double>(n) * seen(k).scale * s.profiles.fastest(k, full) / full;
        ahead += n;
      }
    }
    const int batch = static_cast<int>(
        std::min<std::size_t>(own_queue + 1, static_cast<std::size_t>(saturated_batch(s, m))));
    const Seen own = seen(m);
    const DurationNs done = now + static_cast<DurationNs>(work_ns / lanes.size()) +
                            static_cast<DurationNs>(own.scale * s.profiles.fastest(m, batch)) +
                            own.margin;
    if (done <= deadline) return true;
    if (why) {
      *why = "model '" + s.models.at(m).spec.name + "' is overloaded: " + std::to_string(ahead) +
             " request(s) queued ahead on its " + std::to_string(lanes.size()) +
             " lane(s) would finish it " + std::to_string(to_ms(done - deadline)) +
             " ms after its deadline";
    }
    return false;
  }

 private:
  struct Errors {
    std::deque<DurationNs> window;  // recent measured - predicted
    DurationNs margin = 0;          // quantile of window, floored
    double scale = 1.0;             // EWMA of measured / profiled
  };

  // Overload: when the head's deadline leaves time only for a small batch and so does the next
  // one's after it, the lane keeps running tiny batches that rescue the oldest requests just in
  // time, and throughput stays too low to ever catch up (a metastable state, seen after a burst
  // or a re-layout). Give up the first k (smallest power of two that works) when the batch
  // starting after them, within its own head's deadline, serves requests at least twice as fast
  // (requests per second of lane time). Critical queues only: with best-effort requests queued
  // the priority rules decide. Latencies are the fastest lane's.
  void give_up_head(SchedulingState& s, int m, TimeNs now, std::vector<RequestPtr>& out) const {
    RequestQueue& q = *s.queues[m];
    const std::size_t queued = q.size();
    const int max_batch = s.models.at(m).spec.max_batch_size;
    if (queued < 3 || q.size(1) > 0) return;
    auto cost = [&](int b) { return scaled(m, s.profiles.fastest(m, b)) + margin(m); };
    // The common case, checked first: the largest batch the queue allows fits the head.
    const int full = static_cast<int>(std::min<std::size_t>(queued, max_batch));
    const auto head = q.earliest_deadline();
    if (!head || now + cost(full) <= *head) return;
    // The largest batch of the requests after the first `skip` that, started at `at`, ends
    // within the deadline of the first of them.
    auto batch_within = [&](std::size_t skip, TimeNs at) {
      const auto d = skip == 0 ? q.earliest_deadline() : q.deadline_after(skip, 0);
      if (!d) return 0;
      int b = static_cast<int>(std::min<std::size_t>(queued - skip, max_batch));
      while (b >= 1 && at + cost(b) > *d) --b;
      return b;
    };
    // A lone head runs without the margin (next_batch): it was not dropped, so b0 >= 1.
    const int b0 = std::max(1, batch_within(0, now));
    const int after = batch_within(b0, now + cost(b0));
    if (after >= static_cast<int>(std::min<std::size_t>(queued - b0, max_batch))) return;
    const double rate0 = b0 / static_cast<double>(cost(b0));
    for (std::size_t k = 1; k < queued && k <= 4 * static_cast<std::size_t>(max_batch); k *= 2) {
      const int bk = batch_within(k, now);
      if (bk > b0 && bk / static_cast<double>(cost(bk)) >= 2 * rate0) {
        for (auto& r : q.pop_up_to(k)) out.push_back(std::move(r));
        return;
      }
    }
  }
  // Fair share: the batch of the queued model on lane `L` that got the least lane time lately,
  // when that is under an even share (kShareFloor) of what the queued models got; else none.
  template <typename Predict, typename Cost>
  Batch underserved_batch(int L, const std::vector<std::pair<TimeNs, int>>& order,
                          SchedulingState& s, TimeNs now, const Predict& predict,
                          const Cost& cost) const {
    if (L >= static_cast<int>(usage_.size())) return {};
    const std::vector<double>& u = usage_[L];
    auto used = [&](int m) { return m < static_cast<int>(u.size()) ? u[m] : 0.0; };
    double total = 0;
    int least = -1;
    TimeNs least_head = 0;
    for (const auto& [d, m] : order) {
      total += used(m);
      if (least < 0 || used(m) < used(least)) least = m, least_head = d;
    }
    if (total <= 0 || used(least) >= kShareFloor * total / static_cast<double>(order.size())) return {};
    if (least == order.front().second) return {};  // EDF serves it next anyway
    // Only once its head waited half its SLO: below that the lane is not starving it (EDF
    // would serve it in time), and jumping ahead could only make the others late.
    if (least_head - now > s.models.at(least).spec.slo / 2) return {};
    DurationNs others_slo = kNever;
    for (const auto& [d, o] : order) {
      if (o != least) others_slo = std::min(others_slo, s.models.at(o).spec.slo);
    }
    RequestQueue& q = *s.queues[least];
    int b = static_cast<int>(std::min<std::size_t>(q.size(), s.models.at(least).spec.max_batch_size));
    while (b > 1 && !(now + cost(least, b) <= least_head && 2 * cost(least, b) <= others_slo)) --b;
    if (now + (b == 1 ? predict(least, 1) : cost(least, b)) > least_head) return {};
    Batch batch;
    batch.model = least;
    batch.requests = q.pop_up_to(static_cast<std::size_t>(b));
    batch.predicted_ns = predict(least, b);
    return batch;
  }

  // The largest batch of model `k` that fair share may run ahead of a model whose SLO is `slo`
  // (its profiled latency at most half of it), at least 1.
  static std::size_t duty_batch(const SchedulingState& s, int k, DurationNs slo) {
    for (int b = s.models.at(k).spec.max_batch_size; b > 1; --b) {
      if (2 * s.profiles.fastest(k, b) <= slo) return static_cast<std::size_t>(b);
    }
    return 1;
  }

  DurationNs margin(int m) const {
    auto it = errors_.find(m);
    return it == errors_.end() ? cfg_.min_margin_ns : it->second.margin;
  }
  // A profiled latency times the model's learned slow-down factor.
  DurationNs scaled(int m, DurationNs profiled) const {
    if (profiled == kNever) return kNever;
    auto it = errors_.find(m);
    return it == errors_.end() ? profiled : static_cast<DurationNs>(profiled * it->second.scale);
  }

  // The batch a backlogged lane runs of model `m`: the largest whose latency leaves half the SLO
  // to wait in (a request waits about one batch, then runs in the next), at least 1.
  static int saturated_batch(const SchedulingState& s, int m) {
    const ModelSpec& spec = s.models.at(m).spec;
    for (int b = spec.max_batch_size; b > 1; --b) {
      if (2 * s.profiles.fastest(m, b) <= spec.slo) return b;
    }
    return 1;
  }

  // What has_room (submitting threads) reads of errors_ (the loop's): per model, scale and
  // margin as of the last batch.
  struct Seen {
    double scale = 1.0;
    DurationNs margin = 0;
  };
  // Whether fair share put a batch of `m` first within the last `window`.
  bool jumped_lately(int m, TimeNs now, DurationNs window) const {
    std::lock_guard<std::mutex> lock(seen_mu_);
    return m < static_cast<int>(jumped_at_.size()) && jumped_at_[m] != kNever &&
           now - jumped_at_[m] <= window;
  }
  Seen seen(int m) const {
    std::lock_guard<std::mutex> lock(seen_mu_);
    return m < static_cast<int>(seen_.size()) ? seen_[m] : Seen{1.0, cfg_.min_margin_ns};
  }

  // Decay of the lane time fair share counts, in ns of the lane's busy time.
  static constexpr double kShareTau = 0.5e9;
  // A queued model under this fraction of an even share of the lane goes first.
  static constexpr double kShareFloor = 1.0;

  const PolicyConfig cfg_;
  std::unordered_map<int, Errors> errors_;  // per model; the loop's alone
  std::vector<std::vector<double>> usage_;  // [lane][model]: decayed lane time (fair share)
  mutable std::mutex seen_mu_;              // guards seen_ and jumped_at_
  std::vector<Seen> seen_;                  // per model: copied from errors_ after each batch
  std::vector<TimeNs> jumped_at_;           // per model: when fair share last put it first
};

}  // namespace

std::unique_ptr<BatchPolicy> make_deadline_policy(const PolicyConfig& config) {
  return std::make_unique<DeadlinePolicy>(config);
}

}  // namespace gpulanes
