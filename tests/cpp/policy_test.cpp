// The batch policies on virtual time: scripted batch latencies, scripted arrivals, no threads and
// no sleeping, so every dispatch time and batch size below is exact and hand-computed.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "gpulanes/runtime/virtual_driver.h"
#include "test_support.h"

using namespace gpulanes;
using namespace gpulanes::testing;

namespace {

constexpr TimeNs kT0 = from_ms(1000);  // virtual start time

struct Dispatch {
  TimeNs at;
  int model;
  int size;
};

// A runtime on virtual lanes, its driver, and a log of every dispatch and completion.
class Sim {
 public:
  using LatencyFn = std::function<DurationNs(int model, int batch_size)>;

  // These tests follow the loop's decisions exactly, so requests reach the queue: admission by
  // queued work at submit is off unless `queue_admission` (its own tests).
  Sim(const std::string& policy, LatencyFn latency, PolicyConfig config = {}, int lanes = 1,
      bool queue_admission = false)
      : clock_(std::make_shared<VirtualClock>(kT0)) {
    RuntimeOptions o;
    o.device = "virtual";
    o.policy = policy;
    o.policy_config = config;
    o.policy_config.queue_admission = queue_admission;
    o.virtual_lanes = lanes;
    o.virtual_latency = [this, latency](int m, int b) {
      dispatches.push_back({clock_->now(), m, b});
      return latency(m, b);
    };
    rt = std::make_unique<Runtime>(o, clock_);
  }

  // Registers a model; with `profiled`, its profile is the scripted latency for sizes 1..max.
  void add(const std::string& name, int max_batch, DurationNs slo, const LatencyFn& latency,
           bool profiled = true) {
    static const torch::jit::Module module = affine_module(0);
    const int m = rt->register_model(spec(name, max_batch, 1'000'000, slo), module, {sample(0)});
    if (!profiled) return;
    std::vector<LatencyPoint> points;
    for (int b = 1; b <= max_batch; ++b) points.push_back({b, 0, to_us(latency(m, b)), 0, 1});
    rt->set_profile(name, points);
  }

  void start() {
    rt->start();
    driver = std::make_unique<VirtualDriver>(*rt, *clock_);
  }

  // Submits at `t` (relative to kT0) with a deadline `rel_deadline` after it; key = order given.
  void submit_at(DurationNs t, const std::string& model, DurationNs rel_deadline,
                 int priority = 0) {
    const int key = submitted++;
    driver->at(kT0 + t, [=, this] {
      try {
        rt->submit(model, {sample(static_cast<float>(key))}, clock_->now() + rel_deadline, priority,
                   [=, this](Outcome&& o) {
                     done.push_back({key, o.code, clock_->now()});
                   });
      } catch (const Error& e) {
        refused.push_back({key, e.code(), clock_->now()});
      }
    });
  }

  void run() { driver->run_until(); }

  std::vector<int> sizes() const {
    std::vector<int> out;
    for (const auto& d : dispatches) out.push_back(d.size);
    return out;
  }
  int count(ErrorCode code) const {
    int n = 0;
    for (const auto& d : done) n += d.code == code;
    return n;
  }

  struct Done {
    int key;
    ErrorCode code;
    TimeNs at;
  };
  std::unique_ptr<Runtime> rt;
  std::unique_ptr<VirtualDriver> driver;
  std::vector<Dispatch> dispatches;
  std::vector<Done> done, refused;
  int submitted = 0;

 private:
  std::shared_ptr<VirtualClock> clock_;
};

DurationNs ms(double v) { return from_ms(v); }

}  // namespace

TEST(DeadlinePolicy, ServesEarliestDeadlineFirst) {
  auto lat = [](int, int) { return ms(1); };
  Sim sim("deadline", lat);
  sim.add("m", 1, ms(1000), lat);
  sim.start();
  sim.submit_at(0, "m", ms(100));  // runs at once
  const double rel[] = {50, 20, 80, 30};
  for (double r : rel) sim.submit_at(ms(0.1), "m", ms(r));
  sim.run();
  std::vector<int> order;
  for (const auto& d : sim.done) order.push_back(d.key);
  EXPECT_EQ(order, (std::vector<int>{0, 2, 4, 1, 3}));
  EXPECT_EQ(sim.count(ErrorCode::kOk), 5);
}

TEST(DeadlinePolicy, LargestBatchThatMeetsTheEarliestDeadlineAndDropsTheRest) {
  auto lat = [](int, int b) { return ms(1 + b); };  // 2, 3, 4, 5 ms ... for 1, 2, 3, 4
  Sim sim("deadline", lat);
  sim.add("m", 8, ms(1000), lat);
  sim.start();
  sim.submit_at(0, "m", ms(100));  // occupies the lane until 2 ms
  for (int i = 0; i < 8; ++i) sim.submit_at(ms(0.5), "m", ms(7));  // due at 7.5 ms
  sim.run();
  // At 2 ms: 2 + L(b) + 0.2 (margin) <= 7.5  =>  L(b) <= 5.3  =>  b = 4.
  ASSERT_EQ(sim.sizes(), (std::vector<int>{1, 4}));
  EXPECT_EQ(sim.dispatches[1].at, kT0 + ms(2));
  // The other 4 are expected to miss even alone once 7.5 - L(1) = 5.5 ms has passed (the lane
  // is busy until 7 ms): dropped then, never run.
  EXPECT_EQ(sim.count(ErrorCode::kOk), 5);
  EXPECT_EQ(sim.count(ErrorCode::kDeadlineExceeded), 4);
  ModelStats s = sim.rt->stats().at(0);
  EXPECT_EQ(s.dropped, 4u);
  EXPECT_EQ(s.met, 5u);
  EXPECT_EQ(s.batches, 2u);
  for (const auto& d : sim.done) {
    if (d.code == ErrorCode::kDeadlineExceeded) EXPECT_EQ(d.at, kT0 + ms(5.5) + 1);
  }
}

TEST(DeadlinePolicy, AdmissionRefusesWhatCannotFinishEvenAlone) {
  auto lat = [](int, int) { return ms(2); };
  Sim sim("deadline", lat);
  sim.add("m", 4, ms(1000), lat);
  sim.start();
  sim.submit_at(0, "m", ms(1.5));  // 2 ms alone > 1.5 ms
  sim.submit_at(0, "m", ms(2.5));  // fits alone: admitted and met
  sim.run();
  ASSERT_EQ(sim.refused.size(), 1u);
  EXPECT_EQ(sim.refused[0].code, ErrorCode::kDeadlineExceeded);
  EXPECT_EQ(sim.count(ErrorCode::kOk), 1);
  EXPECT_EQ(sim.rt->stats().at(0).rejected, 1u);
}

TEST(DeadlinePolicy, WaitsForALargerBatchOnlyWhenArrivalsMakeItWorthwhile) {
  auto lat = [](int, int b) { return ms(1 + 0.1 * b); };
  PolicyConfig wait;
  wait.wait_for_batch = true;
  {
    Sim sim("deadline", lat, wait);
    sim.add("m", 8, ms(1000), lat);
    sim.start();
    for (int i = 0; i < 8; ++i) sim.submit_at(ms(i), "m", ms(50));  // one per ms
    sim.run();
    // The first goes alone (no arrival gap known yet). The next 7 wait while requests keep
    // coming every 1 ms; two gaps after the last one (7 ms) the stream counts as paused.
    ASSERT_EQ(sim.sizes(), (std::vector<int>{1, 7}));
    EXPECT_EQ(sim.dispatches[1].at, kT0 + ms(9) + 1);
    EXPECT_EQ(sim.count(ErrorCode::kOk), 8);
  }
  {
    Sim sim("deadline", lat, wait);
    sim.add("m", 8, ms(1000), lat);
    sim.start();
    for (int i = 0; i < 4; ++i) sim.submit_at(ms(100 * i), "m", ms(50));  // sparse
    sim.run();
    ASSERT_EQ(sim.sizes(), (std::vector<int>{1, 1, 1, 1}));
    for (int i = 0; i < 4; ++i) EXPECT_EQ(sim.dispatches[i].at, kT0 + ms(100 * i));  // no waiting
  }
}

TEST(DeadlinePolicy, WaitingEndsOneMarginBeforeTheLatestStartOfALargerBatch) {
  auto lat = [](int, int b) { return ms(1 + 0.1 * b); };
  PolicyConfig wait;
  wait.wait_for_batch = true;
  Sim sim("deadline", lat, wait);
  sim.add("m", 8, ms(1000), lat);
  sim.start();
  // Requests every 1 ms, each due 6 ms later; the head of the waiting batch (#1) is due at 7 ms.
  // With k queued the lane keeps waiting while now + gap <= 7 - (L(k+1) + margin) - margin.
  // At 4 ms (k = 4): 5 <= 7 - 1.7 - 0.2 = 5.1, so it waits; at 5 ms (k = 5): 6 > 7 - 1.8 - 0.2
  // = 5.0, so the largest batch that fits goes at once: 5 + L(5) + 0.2 = 6.7 <= 7 ms.
  for (int i = 0; i < 8; ++i) sim.submit_at(ms(i), "m", ms(6));
  sim.run();
  ASSERT_GE(sim.dispatches.size(), 2u);
  EXPECT_EQ(sim.dispatches[1].size, 5);
  EXPECT_EQ(sim.dispatches[1].at, kT0 + ms(5));
  EXPECT_EQ(sim.count(ErrorCode::kOk), 8);  // every request met its deadline
  for (const auto& d : sim.dispatches) EXPECT_GE(d.at, kT0);
}

TEST(DeadlinePolicy, WorkConservingByDefault) {
  auto lat = [](int, int b) { return ms(0.4 + 0.1 * b); };  // a batch of one ends before the next
  Sim sim("deadline", lat);
  sim.add("m", 8, ms(1000), lat);
  sim.start();
  for (int i = 0; i < 8; ++i) sim.submit_at(ms(i), "m", ms(50));  // one per ms
  sim.run();
  EXPECT_EQ(sim.sizes(), std::vector<int>(8, 1));  // each starts on arrival: the lane is free
  for (int i = 0; i < 8; ++i) EXPECT_EQ(sim.dispatches[i].at, kT0 + ms(i));
}

TEST(DeadlinePolicy, BatchesLeaveRoomForTheOtherModelsOnTheLane) {
  auto lat = [](int m, int b) { return m == 0 ? ms(10 * b) : ms(1); };
  Sim sim("deadline", lat);
  sim.add("slow", 8, ms(1000), lat);
  sim.add("fast", 8, ms(30), lat);
  sim.start();
  for (int i = 0; i < 8; ++i) sim.submit_at(0, "slow", ms(500));
  sim.submit_at(ms(25), "fast", ms(30));
  sim.run();
  // Alone, "slow" would run all 8 at once (80 ms). Sharing the lane with "fast" (SLO 30 ms), a
  // batch may take at most 15 ms including the margin: one at a time, so the fast request that
  // arrives at 25 ms starts at 30 ms and meets its deadline.
  ASSERT_GE(sim.dispatches.size(), 4u);
  EXPECT_EQ(sim.dispatches[0].size, 1);
  EXPECT_EQ(sim.dispatches[3].model, 1);
  EXPECT_EQ(sim.dispatches[3].at, kT0 + ms(30));
  EXPECT_EQ(sim.count(ErrorCode::kOk), 9);
}

TEST(DeadlinePolicy, ObservedErrorsShrinkTheBatchesItDaresToForm) {
  // Profile L(b) = 1 + 0.5 b ms. One machine matches it; the other is 1 ms slower per batch.
  auto profile = [](int, int b) { return ms(1 + 0.5 * b); };
  auto slower = [](int, int b) { return ms(2 + 0.5 * b); };
  auto run = [&](const Sim::LatencyFn& real) {
    Sim sim("deadline", real);
    sim.add("m", 8, ms(1000), profile);
    sim.start();
    sim.submit_at(0, "m", ms(100));  // one batch to learn from
    for (int i = 0; i < 6; ++i) sim.submit_at(ms(10), "m", ms(4.3));
    sim.run();
    return sim.sizes();
  };
  // Accurate: margin stays 0.2 ms: 10 + L(b) + 0.2 <= 14.3  =>  b = 6.
  EXPECT_EQ(run(profile), (std::vector<int>{1, 6}));
  // Slower: error 1 ms => margin 1 ms, scale 1 + 0.1 (2.5/1.5 - 1) = 1.067:
  // 10 + 1.067 L(b) + 1 <= 14.3  =>  L(b) <= 3.09  =>  b = 4 (and the other 2 are dropped).
  EXPECT_EQ(run(slower), (std::vector<int>{1, 4}));
}

TEST(MaxDelayPolicy, FollowsTritonsDynamicBatcherRules) {
  auto lat = [](int, int) { return ms(1); };
  PolicyConfig cfg;
  cfg.preferred_batch_sizes = {4};
  cfg.max_queue_delay_ns = ms(5);
  {  // no preferred size can be formed: wait until the oldest has waited max_queue_delay
    Sim sim("max_delay", lat, cfg);
    sim.add("m", 8, ms(1000), lat);
    sim.start();
    for (int i = 0; i < 3; ++i) sim.submit_at(ms(i), "m", ms(100));
    sim.run();
    ASSERT_EQ(sim.sizes(), (std::vector<int>{3}));
    EXPECT_EQ(sim.dispatches[0].at, kT0 + ms(5));
  }
  {  // a preferred size is sent as soon as it can be formed
    Sim sim("max_delay", lat, cfg);
    sim.add("m", 8, ms(1000), lat);
    sim.start();
    for (int i = 0; i < 4; ++i) sim.submit_at(ms(i), "m", ms(100));
    sim.run();
    ASSERT_EQ(sim.sizes(), (std::vector<int>{4}));
    EXPECT_EQ(sim.dispatches[0].at, kT0 + ms(3));
  }
  {  // the largest preferred size that can be formed, even when more are queued
    Sim sim("max_delay", lat, cfg);
    sim.add("m", 8, ms(1000), lat);
    sim.start();
    for (int i = 0; i < 7; ++i) sim.submit_at(0, "m", ms(100));
    sim.run();
    EXPECT_EQ(sim.sizes(), (std::vector<int>{4, 3}));  // then 3 after waiting out the delay
    EXPECT_EQ(sim.dispatches[1].at, kT0 + ms(5));
  }
  {  // no preferred sizes and no delay: a full batch at once, the rest as soon as the lane frees
    Sim sim("max_delay", lat);
    sim.add("m", 8, ms(1000), lat);
    sim.start();
    for (int i = 0; i < 10; ++i) sim.submit_at(0, "m", ms(100));
    sim.run();
    EXPECT_EQ(sim.sizes(), (std::vector<int>{8, 2}));
    EXPECT_EQ(sim.dispatches[1].at, kT0 + ms(1));
  }
}

TEST(MaxDelayPolicy, QueueTimeoutRejectsAndLateRequestsStillRun) {
  auto lat = [](int, int) { return ms(10); };
  PolicyConfig cfg;
  cfg.queue_timeout_ns = ms(3);
  Sim sim("max_delay", lat, cfg);
  sim.add("m", 1, ms(1000), lat);
  sim.start();
  sim.submit_at(0, "m", ms(100));
  sim.submit_at(ms(1), "m", ms(100));  // queued > 3 ms behind a 10 ms batch: rejected at 4 ms
  sim.run();
  EXPECT_EQ(sim.sizes(), (std::vector<int>{1}));
  ASSERT_EQ(sim.count(ErrorCode::kDeadlineExceeded), 1);
  for (const auto& d : sim.done) {
    if (d.code != ErrorCode::kOk) EXPECT_EQ(d.at, kT0 + ms(4));
  }
  // Without a timeout, a request that is already late still runs (and counts as missed).
  Sim late("max_delay", lat);
  late.add("m", 1, ms(1000), lat);
  late.start();
  late.submit_at(0, "m", ms(100));
  late.submit_at(ms(1), "m", ms(5));  // due at 6 ms; can start at 10 ms
  late.run();
  EXPECT_EQ(late.sizes(), (std::vector<int>{1, 1}));
  EXPECT_EQ(late.rt->stats().at(0).missed, 1u);
}

TEST(AimdPolicy, AdditiveIncreaseMultiplicativeDecrease) {
  auto lat = [](int, int b) { return ms(b); };
  Sim sim("aimd", lat);
  sim.add("m", 16, ms(5.5), lat);  // batches of up to 5 fit the SLO
  sim.start();
  for (int i = 0; i < 60; ++i) sim.submit_at(0, "m", ms(10'000));
  sim.run();
  std::vector<int> sizes = sim.sizes();
  ASSERT_GE(sizes.size(), 10u);
  // +1 per batch within the SLO; 6 ms > 5.5 ms cuts 6 to floor(6 * 0.9) = 5; then it oscillates.
  EXPECT_EQ(std::vector<int>(sizes.begin(), sizes.begin() + 10),
            (std::vector<int>{1, 2, 3, 4, 5, 6, 5, 6, 5, 6}));
  EXPECT_EQ(sim.count(ErrorCode::kOk), 60);
}

TEST(FifoPolicy, ArrivalOrderAcrossModelsOneAtATime) {
  auto lat = [](int, int) { return ms(1); };
  Sim sim("fifo", lat);
  sim.add("a", 8, ms(1000), lat);
  sim.add("b", 8, ms(1000), lat);
  sim.start();
  sim.submit_at(0, "a", ms(100));
  sim.submit_at(ms(0.1), "b", ms(90));
  sim.submit_at(ms(0.2), "a", ms(10));  // most urgent, but last in
  sim.submit_at(ms(0.3), "b", ms(50));
  sim.run();
  std::vector<int> order;
  for (const auto& d : sim.done) order.push_back(d.key);
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(sim.sizes(), (std::vector<int>{1, 1, 1, 1}));
}

TEST(Metrics, InvariantHoldsOverThousandsOfRandomWorkloads) {
  std::mt19937 rng(12345);
  const char* policies[] = {"deadline", "fifo", "max_delay", "aimd"};
  for (int c = 0; c < 2000; ++c) {
    const std::string policy = policies[rng() % 4];
    const int models = 1 + rng() % 3, lanes = 1 + rng() % 3;
    std::vector<double> base(models), per(models);
    for (int m = 0; m < models; ++m) {
      base[m] = 0.2 + (rng() % 2000) / 1000.0;
      per[m] = (rng() % 500) / 1000.0;
    }
    auto lat = [base, per](int m, int b) { return ms(base[m] + per[m] * b); };
    PolicyConfig cfg;
    cfg.max_queue_delay_ns = ms(rng() % 3);
    cfg.queue_timeout_ns = rng() % 2 ? ms(rng() % 20) : 0;
    if (rng() % 2) cfg.preferred_batch_sizes = {2, 4};
    Sim sim(policy, lat, cfg, lanes);
    for (int m = 0; m < models; ++m) {
      sim.add("m" + std::to_string(m), 1 + rng() % 8, ms(1 + rng() % 50), lat, rng() % 4 != 0);
    }
    sim.start();
    const int n = 5 + rng() % 60;
    for (int i = 0; i < n; ++i) {
      sim.submit_at(ms((rng() % 40000) / 1000.0), "m" + std::to_string(rng() % models),
                    ms((rng() % 30000) / 1000.0 - 2));
    }
    sim.run();
    ASSERT_EQ(static_cast<int>(sim.done.size() + sim.refused.size()), n) << "case " << c;
    std::map<int, int> seen;
    for (const auto& d : sim.done) ASSERT_EQ(++seen[d.key], 1) << "resolved twice, case " << c;
    std::uint64_t submitted = 0, accounted = 0;
    for (const ModelStats& s : sim.rt->stats()) {
      ASSERT_EQ(s.in_flight, 0u) << "case " << c;
      ASSERT_EQ(s.submitted, s.met + s.missed + s.dropped + s.rejected + s.failed) << "case " << c;
      submitted += s.submitted;
      accounted += s.met + s.missed + s.dropped;
    }
    ASSERT_EQ(submitted, static_cast<std::uint64_t>(n)) << "case " << c;
    ASSERT_EQ(accounted, sim.done.size()) << "case " << c;
  }
}

// Priorities: a best-effort request (1) gives way only when both cannot be served.
namespace {
constexpr int kBestEffort = 1;

// Outcome by request key, in key order.
std::vector<ErrorCode> codes_by_key(const Sim& sim) {
  std::vector<ErrorCode> out(sim.submitted, ErrorCode::kInternal);
  for (const auto& d : sim.done) out[d.key] = d.code;
  return out;
}
}  // namespace

TEST(DeadlinePolicyPriority, CriticalRequestWinsWhenBothCannotBeServed) {
  // 10 ms per request, one lane. Best effort due at 12 ms, critical due at 15 ms: EDF alone would
  // run the best-effort one and lose the critical one; with priorities the critical one runs
  // and the best-effort one is dropped.
  PolicyConfig cfg;
  cfg.min_margin_ns = 0;
  auto lat = [](int, int) { return ms(10); };
  for (bool with_priority : {false, true}) {
    Sim sim("deadline", lat, cfg);
    sim.add("m", 1, ms(1000), lat);
    sim.start();
    sim.submit_at(0, "m", ms(12), with_priority ? kBestEffort : 0);
    sim.submit_at(0, "m", ms(15), 0);
    sim.run();
    const auto ok = ErrorCode::kOk, dropped = ErrorCode::kDeadlineExceeded;
    EXPECT_EQ(codes_by_key(sim), with_priority ? (std::vector<ErrorCode>{dropped, ok})
                                               : (std::vector<ErrorCode>{ok, dropped}));
    ASSERT_EQ(sim.dispatches.size(), 1u);
  }
}

TEST(DeadlinePolicyPriority, BestEffortKeepsEdfOrderWhenBothFit) {
  PolicyConfig cfg;
  cfg.min_margin_ns = 0;
  auto lat = [](int, int) { return ms(10); };
  Sim sim("deadline", lat, cfg);
  sim.add("m", 1, ms(1000), lat);
  sim.start();
  sim.submit_at(0, "m", ms(25), 0);
  sim.submit_at(0, "m", ms(12), kBestEffort);  // earlier deadline, still first: both make it
  sim.run();
  ASSERT_EQ(sim.done.size(), 2u);
  EXPECT_EQ(sim.done[0].key, 1);
  EXPECT_EQ(codes_by_key(sim), (std::vector<ErrorCode>{ErrorCode::kOk, ErrorCode::kOk}));
  EXPECT_EQ(sim.done[1].at, kT0 + ms(20));
}

TEST(DeadlinePolicyPriority, CriticalRequestOfAnotherModelGoesFirst) {
  // Model a holds only best effort (due 12 ms); model b a critical request due 15 ms.
  PolicyConfig cfg;
  cfg.min_margin_ns = 0;
  auto lat = [](int, int) { return ms(10); };
  Sim sim("deadline", lat, cfg);
  sim.add("a", 1, ms(1000), lat);
  sim.add("b", 1, ms(1000), lat);
  sim.start();
  sim.submit_at(0, "a", ms(12), kBestEffort);
  sim.submit_at(0, "b", ms(15), 0);
  sim.run();
  ASSERT_EQ(sim.dispatches.size(), 1u);
  EXPECT_EQ(sim.dispatches[0].model, 1);
  EXPECT_EQ(codes_by_key(sim), (std::vector<ErrorCode>{ErrorCode::kDeadlineExceeded, ErrorCode::kOk}));
}

TEST(DeadlinePolicyPriority, BatchShrinksSoThatTheCriticalRequestStillFits) {
  // Batches of up to 4 take 10 ms + 5 ms per extra request. Three best-effort requests due at
  // 22 ms sit before a critical one due at 23 ms. EDF alone batches the three (ends at 20 ms) and
  // the critical request is dropped; a batch of all four (25 ms) is too late for the head. With
  // priorities only one best-effort request runs before the critical one (0-10, 10-20 ms) and
  // the other two, which no longer fit, are dropped.
  PolicyConfig cfg;
  cfg.min_margin_ns = 0;
  auto lat = [](int, int b) { return ms(10 + 5 * (b - 1)); };
  for (bool with_priority : {false, true}) {
    Sim sim("deadline", lat, cfg);
    sim.add("m", 4, ms(1000), lat);
    sim.start();
    for (int i = 0; i < 3; ++i) sim.submit_at(0, "m", ms(22), with_priority ? kBestEffort : 0);
    sim.submit_at(0, "m", ms(23), 0);
    sim.run();
    constexpr auto ok = ErrorCode::kOk, dropped = ErrorCode::kDeadlineExceeded;
    if (with_priority) {
      EXPECT_EQ(sim.sizes(), (std::vector<int>{1, 1}));
      EXPECT_EQ(codes_by_key(sim), (std::vector<ErrorCode>{ok, dropped, dropped, ok}));
      EXPECT_EQ(sim.done.back().key, 3);
      EXPECT_EQ(sim.done.back().at, kT0 + ms(20));
    } else {
      EXPECT_EQ(sim.sizes(), (std::vector<int>{3}));
      EXPECT_EQ(codes_by_key(sim), (std::vector<ErrorCode>{ok, ok, ok, dropped}));
    }
  }
}

TEST(DeadlinePolicyOverload, GivesUpTheHeadWhenThatLetsAMuchLargerBatchStart) {
  auto lat = [](int, int b) { return ms(8 + 0.1 * b); };  // fixed cost dominates
  Sim sim("deadline", lat);
  sim.add("m", 16, ms(1000), lat);
  sim.start();
  sim.submit_at(0, "m", ms(100));                              // lane busy until 8.1 ms
  for (int i = 0; i < 2; ++i) sim.submit_at(ms(0.1), "m", ms(16.2));  // A: due 16.3 ms
  for (int i = 0; i < 16; ++i) sim.submit_at(ms(0.2), "m", ms(16.85));  // B: due 17.05 ms
  sim.run();
  // At 8.1 ms A's head fits only alone (8.1 + 8.1 <= 16.3) and nothing fits after it, so the
  // lane would serve 1 request per 8.3 ms; giving up A's two lets B start a batch of 7
  // (8.1 + 8.7 + 0.2 margin <= 17.05), 7 per 8.9 ms. The other 9 of B cannot make it after that.
  ASSERT_EQ(sim.sizes(), (std::vector<int>{1, 7}));
  EXPECT_EQ(sim.dispatches[1].at, kT0 + ms(8.1));
  EXPECT_EQ(sim.count(ErrorCode::kOk), 8);
  EXPECT_EQ(sim.count(ErrorCode::kDeadlineExceeded), 11);
  int a_failed = 0;
  for (const auto& d : sim.done) a_failed += (d.key == 1 || d.key == 2) && d.code != ErrorCode::kOk;
  EXPECT_EQ(a_failed, 2);
}

TEST(DeadlinePolicyOverload, KeepsTheHeadWhenTheRestStillFitsAfterIt) {
  auto lat = [](int, int b) { return ms(8 + 0.1 * b); };
  Sim sim("deadline", lat);
  sim.add("m", 16, ms(1000), lat);
  sim.start();
  sim.submit_at(0, "m", ms(100));
  sim.submit_at(ms(0.1), "m", ms(16.2));                       // due 16.3: alone only
  for (int i = 0; i < 8; ++i) sim.submit_at(ms(0.2), "m", ms(40));  // plenty of time after it
  sim.run();
  EXPECT_EQ(sim.sizes(), (std::vector<int>{1, 1, 8}));
  EXPECT_EQ(sim.count(ErrorCode::kOk), 10);
}

TEST(DeadlinePolicyQueueAdmission, RefusesAtSubmitWhatTheQueueAheadWouldMakeLate) {
  // 10 ms per batch of up to 4 (2.5 ms per request in full batches). With 8 queued behind a
  // running batch, the lane needs 20 ms for them and 10 ms for a 9th's own batch: a request due
  // in 25 ms is refused with Overloaded at once, one due in 40 ms is taken.
  auto lat = [](int, int) { return ms(10); };
  Sim sim("deadline", lat, {}, 1, /*queue_admission=*/true);
  sim.add("m", 4, ms(1000), lat);
  sim.start();
  sim.submit_at(0, "m", ms(1000));                                  // runs 0..10 ms
  for (int i = 0; i < 8; ++i) sim.submit_at(ms(0.1), "m", ms(100));  // queued
  sim.submit_at(ms(0.2), "m", ms(25));                              // 20 + 10 > 25: refused
  sim.submit_at(ms(0.3), "m", ms(40));                              // 20 + 10 <= 40: taken
  sim.run();
  ASSERT_EQ(sim.refused.size(), 1u);
  EXPECT_EQ(sim.refused[0].key, 9);
  EXPECT_EQ(sim.refused[0].code, ErrorCode::kOverloaded);
  EXPECT_EQ(sim.count(ErrorCode::kOk), 10);
  EXPECT_EQ(sim.count(ErrorCode::kDeadlineExceeded), 0);
}

TEST(DeadlinePolicyQueueAdmission, ALongSloModelsBacklogDoesNotShutOutAShortSloModel) {
  // One lane; "long" (SLO 200 ms, 8 ms per batch of up to 4) is offered 1,000/s, twice what the
  // lane can do; "short" (SLO 20 ms, 1 ms per batch of up to 4) 200/s. "long" may queue up to
  // 200 ms of work; the admission estimate counts only the part of it due before a "short"
  // request's deadline, so "short" keeps being admitted and served in time.
  auto lat = [](int m, int) { return m == 0 ? ms(8) : ms(1); };
  Sim sim("deadline", lat, {}, 1, /*queue_admission=*/true);
  sim.add("long", 4, ms(200), lat);
  sim.add("short", 4, ms(20), lat);
  sim.start();
  for (int i = 0; i < 1000; ++i) sim.submit_at(ms(i), "long", ms(200));
  std::vector<int> short_keys;
  for (int i = 0; i < 200; ++i) {
    short_keys.push_back(sim.submitted);
    sim.submit_at(ms(5 * i + 0.5), "short", ms(20));
  }
  sim.run();
  int short_met = 0, long_met = 0;
  for (const auto& d : sim.done) {
    if (d.code != ErrorCode::kOk) continue;
    const bool is_short = std::find(short_keys.begin(), short_keys.end(), d.key) != short_keys.end();
    (is_short ? short_met : long_met)++;
  }
  EXPECT_GE(short_met, 160) << "of 200";  // its share of the lane covers all it asks for
  EXPECT_GE(long_met, 250) << "of 1000";  // and "long" still gets most of the lane
}
