// Request lifecycle through the whole core on CPU lanes, with TorchScript modules defined here.
#include <gtest/gtest.h>
#include <torch/script.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include "gpulanes/runtime/runtime.h"
#include "gpulanes/runtime/virtual_driver.h"
#include "test_support.h"

using namespace gpulanes;
using namespace gpulanes::testing;

namespace {

// Raises when any sample in the batch is negative.
torch::jit::Module picky_module() {
  torch::jit::Module m("Picky");
  m.define(R"JIT(
    def forward(self, x):
        assert bool((x >= 0.0).all()), "negative input"
        return x + 1.0
  )JIT");
  return m;
}

}  // namespace

TEST(Runtime, ResultsMatchDirectForwardAndAreCounted) {
  Collector c;
  Runtime rt(RuntimeOptions{.device = "cpu"});
  rt.register_model(spec("affine"), affine_module(0), {sample(0)});
  rt.start();
  constexpr int kN = 500;
  for (int i = 0; i < kN; ++i) rt.submit("affine", {sample(static_cast<float>(i))}, std::nullopt, 0, c.fn(i));
  c.wait_for(kN);
  for (int i = 0; i < kN; ++i) {
    ASSERT_EQ(c.calls[i], 1);
    ASSERT_TRUE(c.outcomes[i].ok()) << c.outcomes[i].message;
    ASSERT_TRUE(torch::equal(c.outcomes[i].output.toTensor(), sample(2.0f * i + 1.0f)));
  }
  rt.shutdown(true);
  ModelStats s = rt.stats().at(0);
  EXPECT_EQ(s.submitted, static_cast<std::uint64_t>(kN));
  EXPECT_EQ(s.met, static_cast<std::uint64_t>(kN));
  EXPECT_EQ(s.in_flight, 0u);
  std::uint64_t in_batches = 0;
  for (auto [size, count] : s.batch_sizes) {
    EXPECT_LE(size, 8);
    in_batches += static_cast<std::uint64_t>(size) * count;
  }
  EXPECT_EQ(in_batches, static_cast<std::uint64_t>(kN));
  EXPECT_DOUBLE_EQ(s.mean_batch_size, static_cast<double>(kN) / s.batches);
}

TEST(Runtime, RequestsPastTheirDeadlineAreDroppedWithoutRunning) {
  RuntimeOptions o{.device = "cpu", .warmup_rounds = 1};
  o.policy_config.queue_admission = false;  // let them queue: the loop's drop is the subject
  Collector c;
  Runtime rt(o);
  // The lane is held by a batch 20 times longer than one of "quick", so the margins below hold
  // on a loaded machine too (where one batch once took 10x its profile). SLOs far above both.
  rt.register_model(spec("blocker", /*max_batch=*/1, 10000, from_ms(600'000)),
                    affine_module(2000), {sample(0)});
  rt.register_model(spec("quick", /*max_batch=*/1, 10000, from_ms(600'000)), affine_module(100),
                    {sample(0)});
  rt.start();
  rt.submit("blocker", {sample(1)}, std::nullopt, 0, c.fn(0));  // occupies the lane
  std::this_thread::sleep_for(std::chrono::milliseconds(2));
  // Feasible alone on an idle lane (admitted: the prediction with its safety margin was once
  // 1.5x the profile, so 3x), not after waiting for the running batch (20x).
  const DurationNs alone = static_cast<DurationNs>(rt.profile("quick").at(0).p50_us * 1e3);
  const TimeNs soon = rt.clock().now() + 3 * alone;
  for (int i = 1; i <= 5; ++i) rt.submit("quick", {sample(1)}, soon, 0, c.fn(i));
  c.wait_for(6);
  EXPECT_TRUE(c.outcomes[0].ok());
  for (int i = 1; i <= 5; ++i) EXPECT_EQ(c.outcomes[i].code, ErrorCode::kDeadlineExceeded);
  ModelStats s = rt.stats().at(1);
  EXPECT_EQ(s.dropped, 5u);
  EXPECT_EQ(s.batches, 0u);  // the dropped ones never ran
  rt.shutdown(true);
}

TEST(Runtime, ShutdownWithoutDrainFailsQueuedWithRuntimeClosed) {
  Collector c;
  Runtime rt(RuntimeOptions{.device = "cpu", .warmup_rounds = 1});
  rt.register_model(spec("slow", 1, 10000, from_ms(600'000)), affine_module(200), {sample(0)});
  rt.start();
  constexpr int kN = 30;
  for (int i = 0; i < kN; ++i) rt.submit("slow", {sample(1)}, std::nullopt, 0, c.fn(i));
  rt.shutdown(false);
  c.wait_for(kN);
  int ok = 0, closed = 0;
  for (int i = 0; i < kN; ++i) {
    ASSERT_EQ(c.calls[i], 1);
    if (c.outcomes[i].ok()) ok++;
    if (c.outcomes[i].code == ErrorCode::kRuntimeClosed) closed++;
  }
  EXPECT_EQ(ok + closed, kN);
  EXPECT_GE(closed, kN - 3);  // at most the batch in flight (and one racing) ran
  ModelStats s = rt.stats().at(0);
  EXPECT_EQ(s.met + s.missed + s.failed, static_cast<std::uint64_t>(kN));
  try {
    rt.submit("slow", {sample(1)}, std::nullopt, 0, c.fn(999));
    FAIL() << "submit after shutdown must throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kRuntimeClosed);
  }
}

TEST(Runtime, ShutdownWithDrainFinishesEverything) {
  Collector c;
  Runtime rt(RuntimeOptions{.device = "cpu", .warmup_rounds = 1});
  rt.register_model(spec("slow", 4, 10000, from_ms(600'000)), affine_module(20), {sample(0)});
  rt.start();
  for (int i = 0; i < 40; ++i) rt.submit("slow", {sample(i)}, std::nullopt, 0, c.fn(i));
  rt.shutdown(true);
  ASSERT_EQ(c.outcomes.size(), 40u);  // shutdown(drain) returns after the last completion
  for (int i = 0; i < 40; ++i) ASSERT_TRUE(c.outcomes[i].ok());
}

TEST(Runtime, ModelErrorFailsOnlyItsBatchAndServingContinues) {
  Collector c;
  Runtime rt(RuntimeOptions{.device = "cpu"});
  rt.register_model(spec("picky", 1), picky_module(), {sample(0)});
  rt.register_model(spec("affine"), affine_module(0), {sample(0)});
  rt.start();
  rt.submit("picky", {sample(-1)}, std::nullopt, 0, c.fn(0));
  rt.submit("picky", {sample(3)}, std::nullopt, 0, c.fn(1));
  rt.submit("affine", {sample(3)}, std::nullopt, 0, c.fn(2));
  c.wait_for(3);
  EXPECT_EQ(c.outcomes[0].code, ErrorCode::kModelError);
  EXPECT_NE(c.outcomes[0].message.find("negative input"), std::string::npos);
  EXPECT_TRUE(torch::equal(c.outcomes[1].output.toTensor(), sample(4)));
  EXPECT_TRUE(torch::equal(c.outcomes[2].output.toTensor(), sample(7)));
  EXPECT_EQ(rt.stats().at(0).failed, 1u);
}

TEST(Runtime, SubmitRefusalsAreTypedAndNeverCallTheCompletion) {
  Collector c;
  Runtime rt(RuntimeOptions{.device = "cpu", .warmup_rounds = 1});
  // An SLO far above the batch time also on a loaded machine: queue admission must not refuse
  // before the queue is full (the subject here).
  rt.register_model(spec("slow", 1, /*max_queue=*/2, from_ms(600'000)), affine_module(300),
                    {sample(0)});
  std::atomic<int> calls{0};
  auto count = [&](Outcome&&) { calls++; };
  auto code_of = [&](auto&& fn) {
    try {
      fn();
    } catch (const Error& e) {
      return e.code();
    }
    return ErrorCode::kOk;
  };
  EXPECT_EQ(code_of([&] { rt.submit("slow", {sample(0)}, std::nullopt, 0, count); }),
            ErrorCode::kRuntimeClosed);  // not started
  rt.start();
  EXPECT_EQ(code_of([&] { rt.submit("nope", {sample(0)}, std::nullopt, 0, count); }),
            ErrorCode::kUnknownModel);
  EXPECT_EQ(code_of([&] { rt.submit("slow", {torch::zeros({5})}, std::nullopt, 0, count); }),
            ErrorCode::kInvalidInput);
  EXPECT_EQ(code_of([&] { rt.submit("slow", {torch::zeros({4}, torch::kInt64)}, std::nullopt, 0, count); }),
            ErrorCode::kInvalidInput);
  EXPECT_EQ(code_of([&] { rt.submit("slow", {sample(0), sample(0)}, std::nullopt, 0, count); }),
            ErrorCode::kInvalidInput);
  EXPECT_EQ(code_of([&] { rt.submit("slow", {sample(0)}, rt.clock().now() - 1, 0, count); }),
            ErrorCode::kDeadlineExceeded);
  // One runs, two wait; the fourth finds the queue full (the lane is busy for ~10+ ms).
  rt.submit("slow", {sample(0)}, std::nullopt, 0, c.fn(0));
  std::this_thread::sleep_for(std::chrono::milliseconds(3));
  rt.submit("slow", {sample(0)}, std::nullopt, 0, c.fn(1));
  rt.submit("slow", {sample(0)}, std::nullopt, 0, c.fn(2));
  EXPECT_EQ(code_of([&] { rt.submit("slow", {sample(0)}, std::nullopt, 0, count); }),
            ErrorCode::kQueueFull);
  c.wait_for(3);
  EXPECT_EQ(calls.load(), 0);
  ModelStats s = rt.stats().at(0);
  EXPECT_EQ(s.rejected, 6u);  // not started, 3 invalid, past deadline, queue full
  EXPECT_EQ(s.submitted, s.met + s.missed + s.dropped + s.rejected + s.failed + s.in_flight);
  rt.shutdown(true);
}

TEST(Runtime, RegistrationErrors) {
  Runtime rt(RuntimeOptions{.device = "cpu"});
  rt.register_model(spec("a"), affine_module(0), {sample(0)});
  EXPECT_THROW(rt.register_model(spec("a"), affine_module(0), {sample(0)}), Error);  // duplicate
  EXPECT_THROW(rt.register_model(spec("b"), affine_module(0), {torch::zeros({3})}), Error);  // example
  rt.start();
  EXPECT_THROW(rt.register_model(spec("a"), affine_module(0), {sample(0)}), Error);  // duplicate
  // A bad example while serving leaves no trace: the name is free for a good one.
  EXPECT_THROW(rt.register_model(spec("c"), affine_module(0), {torch::zeros({3})}), Error);
  EXPECT_EQ(rt.model_index("c"), -1);
  EXPECT_EQ(rt.register_model(spec("c"), affine_module(0), {sample(0)}), 1);
  EXPECT_THROW(Runtime(RuntimeOptions{.device = "tpu"}).start(), Error);
  EXPECT_THROW(Runtime(RuntimeOptions{.policy = "nope"}), Error);
  rt.shutdown(true);
}

TEST(RuntimeMetrics, LaneBusyTimeAndPredictionErrorOnVirtualTime) {
  // The profile says 10 ms; the lane takes 20 ms. The first batch's prediction is the profile's,
  // so its error is exactly 10 ms, half the measured latency.
  auto clock = std::make_shared<VirtualClock>(from_ms(1000));
  RuntimeOptions o;
  o.device = "virtual";
  o.virtual_latency = [](int, int) { return from_ms(20); };
  Collector c;
  Runtime rt(o, clock);
  rt.register_model(spec("m", 1), affine_module(0), {sample(0)});
  rt.set_profile("m", {{1, 0, 10'000, 0, 1}});
  rt.start();
  VirtualDriver driver(rt, *clock);
  driver.at(from_ms(1000), [&] { rt.submit("m", {sample(1)}, std::nullopt, 0, c.fn(0)); });
  driver.at(from_ms(1050), [] {});  // the clock runs past the batch
  driver.run_until();
  const ModelStats s = rt.stats().at(0);
  EXPECT_EQ(s.prediction.batches, 1u);
  EXPECT_DOUBLE_EQ(s.prediction.mape, 0.5);
  EXPECT_DOUBLE_EQ(s.prediction.bias, 0.5);
  EXPECT_DOUBLE_EQ(s.prediction.p99_abs_ms, 10.0);
  const LaneStats lane = rt.lane_stats().at(0);
  EXPECT_EQ(lane.batches, 1u);
  EXPECT_EQ(lane.met, 1u);
  EXPECT_DOUBLE_EQ(lane.busy_s, 0.02);
  EXPECT_NEAR(lane.busy_fraction, 0.02 / 0.05, 1e-9);
  EXPECT_EQ(lane.batches_by_model.at("m"), 1u);
}

TEST(Runtime, ModelsRegisteredWhileServingServeAndTheOthersNeverStop) {
  // One thread keeps model "a" busy while two more models are registered (each builds and warms
  // up new lanes, then swaps them in): every request of every model resolves once, correctly.
  Runtime rt(RuntimeOptions{.device = "cpu", .cpu_lanes = 2});
  rt.register_model(spec("a"), affine_module(0), {sample(0)});
  rt.start();
  std::atomic<bool> stop{false};
  Collector during;
  std::atomic<int> sent{0};
  std::thread load([&] {
    while (!stop.load()) {
      const int i = sent.fetch_add(1);
      rt.submit("a", {sample(static_cast<float>(i % 100))}, std::nullopt, 0, during.fn(i));
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  rt.register_model(spec("b"), affine_module(0), {sample(0)});
  rt.register_model(spec("c"), affine_module(0), {sample(0)});
  stop = true;
  load.join();
  during.wait_for(static_cast<std::size_t>(sent.load()));
  for (const auto& [i, o] : during.outcomes) {
    ASSERT_TRUE(o.ok()) << o.message;
    ASSERT_TRUE(torch::equal(o.output.toTensor(), sample(2.0f * (i % 100) + 1.0f)));
  }
  for (const auto& [i, n] : during.calls) ASSERT_EQ(n, 1);
  Collector after;
  rt.submit("b", {sample(3)}, std::nullopt, 0, after.fn(0));
  rt.submit("c", {sample(4)}, std::nullopt, 0, after.fn(1));
  after.wait_for(2);
  EXPECT_TRUE(torch::equal(after.outcomes[0].output.toTensor(), sample(7)));
  EXPECT_TRUE(torch::equal(after.outcomes[1].output.toTensor(), sample(9)));
  EXPECT_EQ(rt.stats().size(), 3u);
  EXPECT_FALSE(rt.profile("c").empty());  // measured on the new lanes
  for (const LaneInfo& lane : rt.lanes()) EXPECT_EQ(lane.models.size(), 3u);
  rt.shutdown(true);
}

TEST(Runtime, AnUnregisteredModelDrainsLeavesItsLanesAndItsNameIsFreeAgain) {
  Runtime rt(RuntimeOptions{.device = "cpu", .cpu_lanes = 2, .warmup_rounds = 1});
  rt.register_model(spec("a"), affine_module(0), {sample(0)});
  rt.register_model(spec("slow", 1, 10000, from_ms(600'000)), affine_module(50), {sample(0)});
  rt.start();
  Collector slow;
  constexpr int kN = 12;
  for (int i = 0; i < kN; ++i) rt.submit("slow", {sample(1)}, std::nullopt, 0, slow.fn(i));
  rt.unregister_model("slow", /*drain=*/true);
  ASSERT_EQ(slow.outcomes.size(), static_cast<std::size_t>(kN));  // all done when it returns
  for (const auto& [i, o] : slow.outcomes) ASSERT_TRUE(o.ok()) << o.message;
  try {
    rt.submit("slow", {sample(1)}, std::nullopt, 0, slow.fn(99));
    FAIL() << "an unregistered model must be unknown";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnknownModel);
  }
  EXPECT_EQ(rt.try_submit(1, {sample(1)}, std::nullopt, 0, slow.fn(98)), ErrorCode::kUnknownModel);
  ASSERT_EQ(rt.stats().size(), 1u);
  EXPECT_EQ(rt.stats()[0].name, "a");
  for (const LaneInfo& lane : rt.lanes()) EXPECT_EQ(lane.models, std::vector<std::string>{"a"});
  EXPECT_THROW(rt.unregister_model("slow", true), Error);
  // Its slot is free again: the new model takes it, with nothing of the old one (which took
  // batches of at most 1: the new profile goes up to 8).
  EXPECT_EQ(rt.register_model(spec("slow"), affine_module(0), {sample(0)}), 1);
  EXPECT_EQ(rt.profile("slow").back().batch_size, 8);
  Collector after;
  rt.submit("slow", {sample(3)}, std::nullopt, 0, after.fn(0));
  rt.submit("a", {sample(4)}, std::nullopt, 0, after.fn(1));
  after.wait_for(2);
  EXPECT_TRUE(torch::equal(after.outcomes[0].output.toTensor(), sample(7)));
  EXPECT_TRUE(torch::equal(after.outcomes[1].output.toTensor(), sample(9)));
  EXPECT_EQ(rt.stats().at(1).submitted, 1u);
  rt.shutdown(true);
  EXPECT_THROW(rt.unregister_model("a", true), Error);
}

TEST(Runtime, RegistrationsHaveNoLimitButTheModelsAtOnce) {
  // Before start() a cycle is cheap: many more than the registry's slots.
  Runtime rt(RuntimeOptions{.device = "cpu", .warmup_rounds = 1});
  for (int i = 0; i < 3 * ModelRegistry::kMaxModels; ++i) {
    const std::string name = "m" + std::to_string(i);
    ASSERT_EQ(rt.register_model(spec(name), affine_module(0), {sample(0)}), 0);
    rt.unregister_model(name, true);
  }
  for (int i = 0; i < ModelRegistry::kMaxModels; ++i) {
    rt.register_model(spec("k" + std::to_string(i)), affine_module(0), {sample(0)});
  }
  try {
    rt.register_model(spec("one-too-many"), affine_module(0), {sample(0)});
    FAIL() << "a full registry must refuse";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidInput);
    EXPECT_NE(std::string(e.what()).find("at once"), std::string::npos) << e.what();
  }
  rt.unregister_model("k7", true);
  EXPECT_EQ(rt.register_model(spec("late"), affine_module(0), {sample(0)}), 7);
  EXPECT_EQ(rt.model_names(false).size(), static_cast<std::size_t>(ModelRegistry::kMaxModels));
}

TEST(Runtime, AReusedSlotStartsOverAndTheTraceKeepsTheOldName) {
  Runtime rt(RuntimeOptions{.device = "cpu", .warmup_rounds = 1, .trace = true});
  rt.register_model(spec("a"), affine_module(0), {sample(0)});
  rt.register_model(spec("x", 1), affine_module(0), {sample(0)});
  rt.start();
  Collector c;
  for (int i = 0; i < 3; ++i) rt.submit("x", {sample(1)}, std::nullopt, 0, c.fn(i));
  c.wait_for(3);
  rt.unregister_model("x", true);
  // A registration that fails its warm-up in the released slot gives the slot back.
  torch::jit::Module broken("Broken");
  broken.define(R"JIT(
    def forward(self, x):
        return x.view(3)
  )JIT");
  EXPECT_THROW(rt.register_model(spec("bad"), broken, {sample(0)}), Error);
  EXPECT_EQ(rt.model_index("bad"), -1);
  ASSERT_EQ(rt.register_model(spec("y"), affine_module(0), {sample(0)}), 1);
  rt.submit("y", {sample(2)}, std::nullopt, 0, c.fn(10));
  c.wait_for(4);
  EXPECT_TRUE(torch::equal(c.outcomes[10].output.toTensor(), sample(5)));
  const ModelStats y = rt.stats().at(1);
  EXPECT_EQ(y.name, "y");
  EXPECT_EQ(y.submitted, 1u);
  EXPECT_EQ(rt.profile("y").back().batch_size, 8);
  const auto [records, names] = rt.named_trace();
  std::map<std::string, int> by_name;
  for (const TraceRecord& r : records) by_name[names.at(r.model)]++;
  EXPECT_EQ(by_name["x"], 3);
  EXPECT_EQ(by_name["y"], 1);
  EXPECT_EQ(rt.model_names(true), (std::vector<std::string>{"a", "y"}));
  rt.shutdown(true);
}
