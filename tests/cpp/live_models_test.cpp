// Changing the models of a serving runtime on CPU thread lanes (issue 32): a registration loads
// only the new model, on the lanes that keep serving; unregistering loads nothing and drops a
// lane left without models; a new layout keeps the lanes that hold their models and loads only
// what moves. "rebuild" is the old behaviour, kept for comparison.
#include <gtest/gtest.h>
#include <torch/script.h>

#include <atomic>
#include <thread>

#include "gpulanes/runtime/runtime.h"
#include "test_support.h"

namespace gpulanes {
namespace {

using testing::affine_module;
using testing::Collector;
using testing::sample;
using testing::spec;

RuntimeOptions cpu_options(const std::string& changes) {
  RuntimeOptions o;
  o.device = "cpu";
  o.cpu_lanes = 2;
  o.warmup_rounds = 1;
  o.profile_reps = 3;
  o.layout_changes = changes;
  return o;
}

std::vector<std::string> models_of(const LaneInfo& lane) { return lane.models; }

class LiveModels : public ::testing::TestWithParam<std::string> {};

TEST_P(LiveModels, ARegistrationWhileServingLoadsOnlyTheNewModel) {
  const bool incremental = GetParam() == "incremental";
  Runtime rt(cpu_options(GetParam()));
  for (const char* name : {"a", "b", "c"}) rt.register_model(spec(name), affine_module(0), {sample(0)});
  rt.start();
  EXPECT_EQ(rt.model_loads(), 6u);
  // The others are asked for while the new one is added: every answer arrives and is right.
  Collector c;
  std::atomic<bool> stop{false};
  std::atomic<int> sent{0};
  std::thread load([&] {
    while (!stop.load()) {
      const int i = sent.fetch_add(1);
      rt.submit(i % 2 ? "a" : "b", {sample(static_cast<float>(i))}, std::nullopt, 0, c.fn(i));
      std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
  });
  rt.register_model(spec("d"), affine_module(0), {sample(0)});
  stop = true;
  load.join();
  EXPECT_EQ(rt.model_loads(), incremental ? 8u : 6u + 8u);
  c.wait_for(static_cast<std::size_t>(sent.load()));
  for (int i = 0; i < sent.load(); ++i) {
    ASSERT_TRUE(c.outcomes[i].ok()) << c.outcomes[i].message;
    EXPECT_TRUE(c.outcomes[i].output.toTensor().equal(sample(2.0f * i + 1.0f)));
  }
  for (const LaneInfo& lane : rt.lanes()) {
    EXPECT_EQ(models_of(lane), (std::vector<std::string>{"a", "b", "c", "d"}));
  }
  Collector d;
  rt.submit("d", {sample(1)}, std::nullopt, 0, d.fn(0));
  d.wait_for(1);
  EXPECT_TRUE(d.outcomes[0].output.toTensor().equal(sample(3)));
  rt.shutdown(true);
}

TEST_P(LiveModels, ANewLayoutLoadsOnlyWhatMoves) {
  const bool incremental = GetParam() == "incremental";
  Runtime rt(cpu_options(GetParam()));
  for (const char* name : {"a", "b", "c", "d"}) rt.register_model(spec(name), affine_module(0), {sample(0)});
  rt.start();
  rt.set_lanes({LaneSpec{"cpu", 0, {"a", "b"}}, LaneSpec{"cpu", 0, {"c", "d"}}});
  EXPECT_EQ(rt.model_loads(), incremental ? 8u : 8u + 4u);  // the lanes held all four
  rt.set_lanes({LaneSpec{"cpu", 0, {"c", "d", "a"}}, LaneSpec{"cpu", 0, {"b"}}});
  // "a" moves: loaded once on the lane of "c" and "d", which comes first now
  EXPECT_EQ(rt.model_loads(), incremental ? 9u : 8u + 4u + 4u);
  const std::vector<LaneInfo> lanes = rt.lanes();
  ASSERT_EQ(lanes.size(), 2u);
  EXPECT_EQ(models_of(lanes[0]), (std::vector<std::string>{"a", "c", "d"}));
  EXPECT_EQ(lanes[0].index, 0);
  if (incremental) EXPECT_EQ(lanes[0].loads, 5);  // four at start, then "a"
  // Unregistering "b" leaves its lane without models: the lane goes, nothing is loaded.
  rt.unregister_model("b", true);
  ASSERT_EQ(rt.lanes().size(), 1u);
  EXPECT_EQ(rt.model_loads(), incremental ? 9u : 8u + 4u + 4u + 3u);
  Collector c;
  for (int i = 0; i < 20; ++i) {
    rt.submit(i % 2 ? "a" : "d", {sample(static_cast<float>(i))}, std::nullopt, 0, c.fn(i));
  }
  c.wait_for(20);
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(c.outcomes[i].ok()) << c.outcomes[i].message;
    EXPECT_TRUE(c.outcomes[i].output.toTensor().equal(sample(2.0f * i + 1.0f)));
  }
  rt.shutdown(true);
}

INSTANTIATE_TEST_SUITE_P(Changes, LiveModels, ::testing::Values("incremental", "rebuild"));

}  // namespace
}  // namespace gpulanes
