// Re-planning trigger, admission control and the planner under overload: exact, hand-computed.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "gpulanes/core/error.h"
#include "gpulanes/plan/arrival_shape.h"
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
ShareProfile flat_profile() { return gpulanes::testing::linear_profile(1000, 100); }

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
  const ShareProfile prof = flat_profile();
  PlannerConfig cfg;
  cfg.gpus = 1;
  cfg.variant = "temporal_only";
  // A whole GPU serves at most 8 / (1.8 ms * 1.1) ~ 4040/s of either model. "small" asks for
  // 100/s, "big" for 1e6/s: the small one keeps all of its rate, the big one gets what is left
  // (less than the whole GPU: it shares the lane with "small" in a duty cycle).
  // Dispersion 0: planned for the mean rates, as the numbers here assume.
  std::vector<PlannerModel> models = {{"small", 100, from_ms(100), 8, &prof, 0},
                                      {"big", 1e6, from_ms(100), 8, &prof, 0}};
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
  const ShareProfile prof = flat_profile();
  PlannerConfig cfg;
  cfg.gpus = 2;
  cfg.variant = "self_tuning";
  // Whole-GPU cost of one request: 1.8 ms / 8 = 0.225 ms. At 70% busy, 1000/s needs
  // 1000 * 0.000225 / 0.7 * 132 = 42.4 SMs -> 48; 100/s needs 4.2 -> 8.
  std::vector<PlannerModel> models = {{"light", 100, from_ms(100), 8, &prof, 0},
                                      {"heavy", 1000, from_ms(100), 8, &prof, 0}};
  const Plan plan = make_plan(models, cfg);
  ASSERT_EQ(plan.lanes.size(), 2u);
  EXPECT_TRUE(plan.feasible);
  EXPECT_EQ(plan.lanes[0].models[0].model, 1);  // the larger need is placed first
  EXPECT_EQ(plan.lanes[0].sms, 48);
  EXPECT_EQ(plan.lanes[1].sms, 8);
  EXPECT_EQ(plan.gpus_used, 1);
}

TEST(SelfTuning, GrowsStrugglingLanesAndShrinksIdleOnes) {
  const ShareProfile prof = flat_profile();
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

TEST(BurstRate, NinetyNinthPercentileOfTheCountInOneWindow) {
  // 100/s in 100 ms windows: 10 per window on average. Poisson (dispersion 1): sd sqrt(10), so
  // 10 + 2.326 sqrt(10) = 17.36 per window = 173.6/s; CV about 2 (dispersion 4): twice the sd.
  EXPECT_NEAR(burst_rate(100, 1, from_ms(100)), 173.56, 0.01);
  EXPECT_NEAR(burst_rate(100, 4, from_ms(100)), 247.11, 0.01);
  EXPECT_DOUBLE_EQ(burst_rate(100, 0, from_ms(100)), 100);  // dispersion 0: the mean
  EXPECT_DOUBLE_EQ(burst_rate(0, 4, from_ms(100)), 0);
  for (double r : {1.0, 100.0, 1e5}) {
    EXPECT_NEAR(mean_for_burst(burst_rate(r, 4, from_ms(50)), 4, from_ms(50)), r, 1e-6 * r);
  }
}

TEST(Planner, PlansForTheBurstAndTreatsUnknownTrafficAsBursty) {
  const ShareProfile prof = flat_profile();
  PlannerConfig cfg;
  cfg.gpus = 1;
  cfg.spread = false;
  std::vector<PlannerModel> known = {{"a", 100, from_ms(100), 8, &prof, 1.0}};
  std::vector<PlannerModel> unknown = {{"a", 100, from_ms(100), 8, &prof}};
  std::vector<PlannerModel> mean = {{"a", 100, from_ms(100), 8, &prof, 0.0}};
  EXPECT_NEAR(make_plan(known, cfg).planned_rate[0], burst_rate(100, 1, from_ms(100)), 1e-6);
  EXPECT_NEAR(make_plan(unknown, cfg).planned_rate[0],
              burst_rate(100, cfg.assumed_dispersion, from_ms(100)), 1e-6);
  EXPECT_NEAR(make_plan(mean, cfg).planned_rate[0], 100, 1e-6);
  double lanes_rate = 0;
  for (const auto& l : make_plan(unknown, cfg).lanes) lanes_rate += l.models[0].rate;
  EXPECT_NEAR(lanes_rate, burst_rate(100, cfg.assumed_dispersion, from_ms(100)), 1e-6);
  std::vector<PlannerModel> bad = {{"a", 100, from_ms(100), 8, &prof, std::nan("")}};
  EXPECT_THROW(make_plan(bad, cfg), Error);
}

TEST(Planner, SpreadsIntoIdleGpusOfTheBudgetAndSaysWhatItNeeded) {
  const ShareProfile prof = flat_profile();
  PlannerConfig cfg;
  cfg.gpus = 4;
  cfg.variant = "temporal_only";
  // About 4,040/s per whole GPU: 3,000/s (planned as its Poisson burst, ~3,170/s) needs one.
  std::vector<PlannerModel> models = {{"a", 3000, from_ms(100), 8, &prof, 1.0}};
  cfg.spread = false;
  const Plan tight = make_plan(models, cfg);
  EXPECT_EQ(tight.gpus_used, 1);
  EXPECT_EQ(tight.gpus_needed, 1);
  EXPECT_DOUBLE_EQ(tight.headroom, 1.0);
  cfg.spread = true;
  const Plan spread = make_plan(models, cfg);
  EXPECT_EQ(spread.gpus_needed, 1);
  EXPECT_EQ(spread.gpus_used, 4);  // up to 4x headroom: four whole-GPU lanes
  EXPECT_GT(spread.headroom, 3.0);
  EXPECT_LE(spread.headroom, cfg.max_headroom);
  EXPECT_TRUE(spread.feasible);
  EXPECT_NEAR(spread.planned_rate[0], burst_rate(3000, 1, from_ms(100)) * spread.headroom, 1e-6);
  EXPECT_TRUE(plan_meets_slos(spread, models, cfg));
}

TEST(Planner, UnplacedRateIsInMeanRequestsPerSecond) {
  const ShareProfile prof = flat_profile();
  PlannerConfig cfg;
  cfg.gpus = 1;
  cfg.variant = "temporal_only";
  std::vector<PlannerModel> models = {{"big", 1e6, from_ms(100), 8, &prof, 4.0}};
  const Plan plan = make_plan(models, cfg);
  EXPECT_FALSE(plan.feasible);
  // Its lane takes at most a whole GPU's 4,040/s of bursts; the rest of the mean rate is unplaced.
  EXPECT_GT(plan.unplaced_rate[0], 1e6 - 4040);
  EXPECT_LT(plan.unplaced_rate[0], 1e6);
  EXPECT_LE(plan.planned_rate[0], 4041);
}

TEST(ArrivalShape, PoissonIsDispersionOneAndClumpsAreMore) {
  std::mt19937_64 rng(7);
  ArrivalShape shape({from_ms(100), from_ms(100), from_ms(100)});
  // Model 0: Poisson at 200/s; model 1: the same rate in clumps of 10 at once; model 2: 3 s idle
  // after 0.5 s of traffic (idle windows count as empty ones).
  std::exponential_distribution<double> gap(200.0);
  std::exponential_distribution<double> clump_gap(20.0);
  const TimeNs end = kT0 + from_ms(60'000);
  for (double t = 0; kT0 + from_ms(t * 1e3) < end; t += gap(rng)) shape.on_arrival(0, kT0 + from_ms(t * 1e3));
  for (double t = 0; kT0 + from_ms(t * 1e3) < end; t += clump_gap(rng)) {
    for (int k = 0; k < 10; ++k) shape.on_arrival(1, kT0 + from_ms(t * 1e3));
  }
  for (int k = 0; k < 100; ++k) shape.on_arrival(2, kT0 + from_ms(5 * k));
  const auto s = shape.snapshot(end);
  EXPECT_NEAR(s[0].rate, 200, 10);
  EXPECT_NEAR(s[0].dispersion, 1.0, 0.2);
  EXPECT_NEAR(s[1].rate, 200, 30);
  EXPECT_NEAR(s[1].dispersion, 10.0, 2.5);  // each window's count is 10 x a Poisson count
  EXPECT_GT(s[1].peak_rate, s[0].peak_rate);
  EXPECT_EQ(s[0].windows, ArrivalShape::kWindows > 600 ? 600 : ArrivalShape::kWindows);
  const auto early = ArrivalShape({from_ms(100)});
  EXPECT_LT(early.snapshot(kT0).front().dispersion, 0);  // nothing seen: unknown
  EXPECT_NEAR(s[2].rate, 100 / 60.0, 0.1);  // 100 arrivals over 600 windows
}

TEST(Planner, AMeasuredPeakAboveTheBurstEstimateIsWhatLanesAreSizedFor) {
  // A flash crowd: 100/s on average, but 600/s for seconds at a time. Per-window dispersion
  // (from successive windows) sees Poisson; the measured 99th-percentile window rate does not.
  const ShareProfile prof = flat_profile();
  PlannerConfig cfg;
  cfg.spread = false;
  std::vector<PlannerModel> models = {{"a", 100, from_ms(100), 8, &prof, 1.0, 600.0}};
  EXPECT_NEAR(make_plan(models, cfg).planned_rate[0], 600.0, 1e-6);
  models[0].peak_rate = 50;  // below the burst estimate: the estimate stands
  EXPECT_NEAR(make_plan(models, cfg).planned_rate[0], burst_rate(100, 1, from_ms(100)), 1e-6);
  models[0].peak_rate = -1;
  EXPECT_THROW(make_plan(models, cfg), Error);
}
