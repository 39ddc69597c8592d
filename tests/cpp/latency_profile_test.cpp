#include <gtest/gtest.h>

#include "gpulanes/predict/latency_profile.h"

using namespace gpulanes;

TEST(LatencyProfile, ExactInterpolatedAndExtrapolated) {
  LatencyProfile p({{1, 0, 1000, 0, 5}, {4, 0, 2500, 0, 5}, {8, 0, 4500, 0, 5}});
  EXPECT_EQ(p.predict(1), 1'000'000);
  EXPECT_EQ(p.predict(4), 2'500'000);
  EXPECT_EQ(p.predict(2), 1'500'000);   // 1/3 of the way from 1 to 4
  EXPECT_EQ(p.predict(6), 3'500'000);   // halfway from 4 to 8
  EXPECT_EQ(p.predict(10), 5'500'000);  // slope of the last two points: 500 us per sample
  EXPECT_EQ(LatencyProfile{}.predict(3), 0);
  EXPECT_EQ(LatencyProfile({{2, 0, 800, 0, 1}}).predict(1), 400'000);  // below: proportional
  EXPECT_THROW(LatencyProfile({{0, 0, 1, 0, 1}}), std::invalid_argument);
}

TEST(LatencyProfile, SummarizeSamples) {
  std::vector<DurationNs> ns;
  for (int i = 1; i <= 100; ++i) ns.push_back(i * 1000);  // 1..100 us
  LatencyPoint p = summarize_samples(4, ns);
  EXPECT_EQ(p.batch_size, 4);
  EXPECT_EQ(p.samples, 100);
  EXPECT_DOUBLE_EQ(p.p50_us, 50);
  EXPECT_DOUBLE_EQ(p.p99_us, 99);
  EXPECT_DOUBLE_EQ(p.mean_us, 50.5);
}
