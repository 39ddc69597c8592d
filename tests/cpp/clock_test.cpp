#include <gtest/gtest.h>

#include <chrono>
#include <stdexcept>
#include <thread>
#include <vector>

#include "gpulanes/core/clock.h"

using namespace gpulanes;

TEST(SteadyClock, MatchesSteadyClockAndNeverGoesBack) {
  SteadyClock c;
  const auto ref = std::chrono::duration_cast<std::chrono::nanoseconds>(
                       std::chrono::steady_clock::now().time_since_epoch()).count();
  TimeNs prev = c.now();
  EXPECT_LT(std::llabs(prev - ref), from_ms(50));  // same epoch as steady_clock/CLOCK_MONOTONIC
  for (int i = 0; i < 10000; ++i) {
    TimeNs t = c.now();
    ASSERT_GE(t, prev);
    prev = t;
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_GE(c.now() - prev, from_ms(4));
  EXPECT_FALSE(c.is_virtual());
}

TEST(VirtualClock, MovesOnlyWhenAdvanced) {
  VirtualClock c(1000);
  EXPECT_TRUE(c.is_virtual());
  EXPECT_EQ(c.now(), 1000);
  std::this_thread::sleep_for(std::chrono::milliseconds(2));
  EXPECT_EQ(c.now(), 1000);
  c.advance_to(5000);
  EXPECT_EQ(c.now(), 5000);
  c.advance_by(250);
  EXPECT_EQ(c.now(), 5250);
  c.advance_to(5250);  // same time is fine
  EXPECT_THROW(c.advance_to(5249), std::invalid_argument);
  EXPECT_THROW(c.advance_by(-1), std::invalid_argument);
  EXPECT_EQ(c.now(), 5250);
}

TEST(VirtualClock, ConcurrentAdvancesAddUp) {
  VirtualClock c(0);
  std::vector<std::thread> ts;
  for (int t = 0; t < 8; ++t) {
    ts.emplace_back([&] { for (int i = 0; i < 10000; ++i) c.advance_by(3); });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(c.now(), 8 * 10000 * 3);
}
