// Re-planning trigger, admission control and the planner under overload: exact, hand-computed.
#include <gtest/gtest.h>

#include "gpulanes/core/error.h"
#include "gpulanes/plan/planner.h"
#include "gpulanes/plan/replanner.h"
#include "gpulanes/plan/self_tuning.h"
#include "gpulanes/sched/admission.h"
#include "plan_support.h"

using namespace gpulanes;

namespace {

constexpr TimeNs kT0 = from_ms(1000);

void arrive(Replanner& r, int model, int n) {
  for (int i = 0; i < n; ++i) r.on_arrival(model);
}

// Latency 1 ms + 0.1 ms per sample at the whole GPU (less SMs: latency / share), no L2/DRAM use.
SimModelProfile flat_profile() { return gpulanes::testing::linear_profile(1000, 100); }

}  // namespace

TEST(Replanner, TimerFoldsEachWindowIntoTheEwmaRates) {
  ReplanOptions o;
  o.every_s = 1;
  o.alpha = 0.5;
  o.min_rate = 2;
  Replanner r(o, 2, kT0);
  EXPECT_EQ(r.next_tick(), kT0 + from_ms(1000));
  arrive(r, 0, 100);
  ReplanEvent e;
  EXPECT_FALSE(r.due(kT0 + from_ms(500), &e));
  ASSERT_TRUE(r.due(kT0 + from_ms(1000), &e));
  EXPECT_DOUBLE_EQ(e.t_s, 1.0);
  EXPECT_FALSE(e.drift);
  EXPECT_EQ(e.rates, (std::vector<double>{100, 2}));  // model 1 sent nothing: min_rate
  arrive(r, 0, 300);
  ASSERT_TRUE(r.due(kT0 + from_ms(2000), &e));
  EXPECT_DOUBLE_EQ(e.rates[0], 0.5 * 300 + 0.5 * 100);
}

TEST(Replanner, DriftReplansBeforeTheTimer) {
  ReplanOptions o;
  o.every_s = 10;
  o.alpha = 0.5;
  o.drift = 0.5;
  o.check_s = 1;
  o.initial_rates = {100};
  Replanner r(o, 1, kT0);
  EXPECT_EQ(r.next_tick(), kT0 + from_ms(1000));
  arrive(r, 0, 120);  // +20%: within the threshold
  ReplanEvent e;
  EXPECT_FALSE(r.due(kT0 + from_ms(1000), &e));
  arrive(r, 0, 280);  // 400 in 2 s: 200/s, +100%
  ASSERT_TRUE(r.due(kT0 + from_ms(2000), &e));
  EXPECT_TRUE(e.drift);
  EXPECT_DOUBLE_EQ(e.rates[0], 0.5 * 200 + 0.5 * 100);
  ReplanOptions bad;
  bad.every_s = 1;
  bad.alpha = 0;
  EXPECT_THROW(Replanner(bad, 1, kT0), Error);
}

TEST(Admission, TokenBucketAtTheLimitAndNothingWithout) {
  Admission a(2, /*burst_s=*/0.25);
  a.set_limits({10.0, -1.0}, kT0);  // model 0: 10/s, bucket of 2.5; model 1: unlimited
  EXPECT_TRUE(a.admit(0, kT0));
  EXPECT_TRUE(a.admit(0, kT0));
  EXPECT_FALSE(a.admit(0, kT0));             // 0.5 token left
  EXPECT_TRUE(a.admit(0, kT0 + from_ms(50)));  // +0.5
  EXPECT_FALSE(a.admit(0, kT0 + from_ms(50)));
  for (int i = 0; i < 1000; ++i) EXPECT_TRUE(a.admit(1, kT0));
  a.set_limits({}, kT0);
  EXPECT_TRUE(a.admit(0, kT0 + from_ms(50)));
  EXPECT_LT(a.limit(0), 0);
}

TEST(Admission, LimitsArePartOfWhatThePlanPlaced) {
  Plan p;
  p.unplaced_rate = {0.0, 30.0};
  EXPECT_EQ(admission_limits(p, {50, 100}, 0.9), (std::vector<double>{-1, 0.9 * 70}));
}

TEST(Planner, OverloadSharesTheGpusMaxMinFairly) {
  const SimModelProfile prof = flat_profile();
  PlannerConfig cfg;
  cfg.gpus = 1;
  cfg.variant = "temporal_only";
  // A whole GPU serves at most 8 / (1.8 ms * 1.1) ~ 4040/s of either model. "small" asks for
  // 100/s, "big" for 1e6/s: the small one keeps all of its rate, the big one gets what is left
  // (less than the whole GPU: it shares the lane with "small" in a duty cycle).
  std::vector<PlannerModel> models = {{"small", 100, from_ms(100), 8, &prof},
                                      {"big", 1e6, from_ms(100), 8, &prof}};
  const Plan plan = make_plan(models, cfg);
  EXPECT_FALSE(plan.feasible);
  EXPECT_EQ(plan.unplaced_rate[0], 0.0);
  EXPECT_GT(plan.unplaced_rate[1], 1e6 - 4040);
  EXPECT_LT(plan.unplaced_rate[1], 1e6 - 1000);
  double small = 0, big = 0;
  for (const auto& l : plan.lanes) {
    for (const auto& m : l.models) (m.model == 0 ? small : big) += m.rate;
  }
  EXPECT_DOUBLE_EQ(small, 100);
  EXPECT_NEAR(big, 1e6 - plan.unplaced_rate[1], 1e-6);
  EXPECT_TRUE(plan_meets_slos(plan, models, cfg));
}

TEST(SelfTuning, StartsWithALanePerModelSizedByItsLoad) {
  const SimModelProfile prof = flat_profile();
  PlannerConfig cfg;
  cfg.gpus = 2;
  cfg.variant = "self_tuning";
  // Whole-GPU cost of one request: 1.8 ms / 8 = 0.225 ms. At 70% busy, 1000/s needs
  // 1000 * 0.000225 / 0.7 * 132 = 42.4 SMs -> 48; 100/s needs 4.2 -> 8.
  std::vector<PlannerModel> models = {{"light", 100, from_ms(100), 8, &prof},
                                      {"heavy", 1000, from_ms(100), 8, &prof}};
  const Plan plan = make_plan(models, cfg);
  ASSERT_EQ(plan.lanes.size(), 2u);
  EXPECT_TRUE(plan.feasible);
  EXPECT_EQ(plan.lanes[0].models[0].model, 1);  // the larger need is placed first
  EXPECT_EQ(plan.lanes[0].sms, 48);
  EXPECT_EQ(plan.lanes[1].sms, 8);
  EXPECT_EQ(plan.gpus_used, 1);
}

TEST(SelfTuning, GrowsStrugglingLanesAndShrinksIdleOnes) {
  const SimModelProfile prof = flat_profile();
  PlannerConfig cfg;
  cfg.gpus = 2;
  cfg.variant = "self_tuning";
  std::vector<PlannerModel> models = {{"a", 1, from_ms(100), 8, &prof},
                                      {"b", 1, from_ms(100), 8, &prof},
                                      {"c", 1, from_ms(100), 8, &prof}};
  Plan cur;
  cur.unplaced_rate.assign(3, 0.0);
  auto lane = [](int gpu, int sms, int m) {
    PlannedLane l;
    l.gpu = gpu;
    l.sms = sms;
    l.models.push_back({m, 8, 0, 0});
    return l;
  };
  cur.lanes = {lane(0, 64, 0), lane(0, 40, 1), lane(1, 16, 2)};
  // a misses deadlines (grows from the 28 free SMs), b idles (shrinks), c is fine (stays).
  Plan next = self_tuning_step(cur, {{0.5, 0.9}, {0.2, 1.0}, {0.6, 1.0}}, models, cfg);
  EXPECT_EQ(next.lanes[0].sms, 72);
  EXPECT_EQ(next.lanes[1].sms, 32);
  EXPECT_EQ(next.lanes[2].sms, 16);
  // GPU 0 full: a busy lane takes a granule from the least busy lane beside it.
  cur.lanes = {lane(0, 96, 0), lane(0, 36, 1), lane(1, 16, 2)};
  next = self_tuning_step(cur, {{0.95, 1.0}, {0.5, 1.0}, {0.6, 1.0}}, models, cfg);
  EXPECT_EQ(next.lanes[0].sms, 104);
  EXPECT_EQ(next.lanes[1].sms, 28);
  // A whole-GPU lane that still struggles gets a sibling of two granules where there is room.
  cur.lanes = {lane(0, 132, 0), lane(1, 16, 2)};
  next = self_tuning_step(cur, {{0.99, 0.5}, {0.6, 1.0}}, models, cfg);
  ASSERT_EQ(next.lanes.size(), 3u);
  EXPECT_EQ(next.lanes[2].gpu, 1);
  EXPECT_EQ(next.lanes[2].sms, 16);
  EXPECT_EQ(next.lanes[2].models[0].model, 0);
  EXPECT_EQ(next.gpus_used, 2);
  EXPECT_THROW(self_tuning_step(cur, {}, models, cfg), Error);
}
