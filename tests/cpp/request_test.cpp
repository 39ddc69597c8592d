#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "gpulanes/core/request.h"

using namespace gpulanes;

TEST(Request, CompletesExactlyOnceUnderRacingCompleters) {
  for (int round = 0; round < 200; ++round) {
    Request r;
    std::atomic<int> calls{0};
    ErrorCode got = ErrorCode::kInternal;
    r.on_done = [&](Outcome&& o) { calls++; got = o.code; };
    std::atomic<int> winners{0};
    std::vector<std::thread> ts;
    for (int t = 0; t < 4; ++t) {
      ts.emplace_back([&, t] {
        Outcome o = t == 0 ? Outcome::success(c10::IValue(1))
                           : Outcome::failure(ErrorCode::kRuntimeClosed, "closed");
        if (r.complete(std::move(o))) winners++;
      });
    }
    for (auto& t : ts) t.join();
    ASSERT_EQ(calls.load(), 1);
    ASSERT_EQ(winners.load(), 1);
    ASSERT_TRUE(r.completed());
    ASSERT_TRUE(got == ErrorCode::kOk || got == ErrorCode::kRuntimeClosed);
  }
}

TEST(Request, CompletionReleasesCallbackState) {
  auto token = std::make_shared<int>(42);
  Request r;
  r.on_done = [token](Outcome&&) {};
  EXPECT_EQ(token.use_count(), 2);
  EXPECT_TRUE(r.complete(Outcome::failure(ErrorCode::kModelError, "x")));
  EXPECT_EQ(token.use_count(), 1);  // what the callback captured is gone after it ran
  EXPECT_FALSE(r.complete(Outcome::success(c10::IValue(0))));
}
