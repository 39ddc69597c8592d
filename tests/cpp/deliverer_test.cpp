#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <atomic>
#include <chrono>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include "gpulanes/core/serving_thread.h"
#include "gpulanes/runtime/deliverer.h"

using namespace gpulanes;

namespace {

// A hook that, like the GIL, may be held by someone else: deliver() runs only while `gate` is
// not held by the test.
struct GatedHook {
  std::mutex gate;
  std::atomic<int> calls{0};
  DeliveryHook hook() {
    return [this](const std::function<void()>& deliver) {
      std::lock_guard<std::mutex> lock(gate);
      calls++;
      deliver();
    };
  }
};

std::vector<RequestPtr> requests(int n, std::vector<int>& order, std::mutex& mu, int first) {
  std::vector<RequestPtr> out;
  for (int i = 0; i < n; ++i) {
    auto r = std::make_unique<Request>();
    r->on_done = [&order, &mu, id = first + i](Outcome&&) {
      std::lock_guard<std::mutex> lock(mu);
      order.push_back(id);
    };
    out.push_back(std::move(r));
  }
  return out;
}

std::vector<Outcome> oks(int n) {
  std::vector<Outcome> out;
  for (int i = 0; i < n; ++i) out.push_back(Outcome::success(c10::IValue(i)));
  return out;
}

}  // namespace

TEST(Deliverer, PostNeverWaitsForTheHookAndOneHookCallServesWhatPiledUp) {
  GatedHook gated;
  std::vector<int> order;
  std::mutex mu;
  Deliverer d(gated.hook(), nullptr);
  {
    std::unique_lock<std::mutex> held(gated.gate);  // "the GIL" is busy elsewhere
    for (int b = 0; b < 50; ++b) {
      auto posted = std::async(std::launch::async, [&] {
        d.post(requests(4, order, mu, 4 * b), oks(4));
      });
      // A lane worker posting must not block while the hook is unavailable.
      ASSERT_EQ(posted.wait_for(std::chrono::seconds(10)), std::future_status::ready);
    }
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_TRUE(order.empty());
  }
  d.stop();  // delivers what is pending before it returns
  ASSERT_EQ(order.size(), 200u);
  for (int i = 0; i < 200; ++i) EXPECT_EQ(order[i], i);  // posting order
  EXPECT_LT(gated.calls.load(), 50);  // batches that piled up shared hook calls
}

TEST(Deliverer, PostAfterStopDeliversOnTheCallingThread) {
  GatedHook gated;
  std::vector<int> order;
  std::mutex mu;
  Deliverer d(gated.hook(), nullptr);
  d.stop();
  d.stop();  // idempotent
  d.post(requests(3, order, mu, 0), oks(3));
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(gated.calls.load(), 1);
}

TEST(Deliverer, AlreadyCompletedRequestsAreNotCompletedAgain) {
  GatedHook gated;
  std::vector<int> order;
  std::mutex mu;
  auto rs = requests(2, order, mu, 0);
  ASSERT_TRUE(rs[0]->complete(Outcome::failure(ErrorCode::kRuntimeClosed, "raced")));
  Deliverer d(gated.hook(), nullptr);
  d.post(std::move(rs), oks(2));
  d.stop();
  EXPECT_EQ(order, (std::vector<int>{0, 1}));  // 0 once (the racing failure), 1 once
}

TEST(Deliverer, ItsThreadIsMarkedAsTheRuntimes) {
  int owner = 0;
  std::atomic<const void*> seen{nullptr};
  Deliverer d([&](const std::function<void()>& deliver) { seen = serving_runtime(); deliver(); },
              [&] { mark_serving_thread(&owner); });
  std::vector<int> order;
  std::mutex mu;
  d.post(requests(1, order, mu, 0), oks(1));
  d.stop();
  EXPECT_EQ(seen.load(), &owner);  // a done-callback there cannot wait on its own runtime
}

TEST(Deliverer, FlushReturnsOnceEverythingPostedBeforeItWasDelivered) {
  GatedHook gated;
  std::vector<int> order;
  std::mutex mu;
  Deliverer d(gated.hook(), nullptr);
  d.flush();  // nothing posted: returns at once
  std::future<void> flushed;
  {
    std::unique_lock<std::mutex> held(gated.gate);
    d.post(requests(3, order, mu, 0), oks(3));
    d.post(requests(2, order, mu, 3), oks(2));
    flushed = std::async(std::launch::async, [&] { d.flush(); });
    EXPECT_EQ(flushed.wait_for(std::chrono::milliseconds(50)), std::future_status::timeout);
  }
  flushed.get();
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3, 4}));
}

TEST(Deliverer, DeliveredRequestsAreReleasedOutsideItsLock) {
  // An output tensor that Python saw needs the GIL when its last C++ reference goes, and a
  // thread holding the GIL may be posting: the delivery thread must never release delivered
  // outcomes while it holds its own lock. Here the "GIL" is a recursive mutex (a thread holding
  // it may take it again, as with the GIL) and each outcome's tensor takes it when freed. A
  // deadlock fails by timeout; the deliverer and the poster are then left behind.
  auto gil = std::make_shared<std::recursive_mutex>();
  auto* d = new Deliverer(
      [gil](const std::function<void()>& deliver) {
        std::lock_guard<std::recursive_mutex> hold(*gil);
        deliver();
      },
      nullptr);
  auto done = std::make_shared<std::promise<void>>();
  std::future<void> posted = done->get_future();
  std::thread([d, gil, done] {
    for (int i = 0; i < 5000; ++i) {
      static float value = 1.0f;
      at::Tensor out = at::from_blob(&value, {1}, [gil](void*) {
        std::lock_guard<std::recursive_mutex> hold(*gil);
      });
      std::vector<RequestPtr> rs;
      rs.push_back(std::make_unique<Request>());
      rs.back()->on_done = [](Outcome&&) {};  // leaves the outcome where it was
      std::vector<Outcome> outcomes;
      outcomes.push_back(Outcome::success(c10::IValue(std::move(out))));
      // A Python thread that holds the GIL a while, then posts (as a submit whose loop round
      // fails requests inline does).
      std::lock_guard<std::recursive_mutex> hold(*gil);
      const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(50);
      while (std::chrono::steady_clock::now() < until) {
      }
      d->post(std::move(rs), std::move(outcomes));
    }
    done->set_value();
  }).detach();
  ASSERT_EQ(posted.wait_for(std::chrono::seconds(60)), std::future_status::ready)
      << "post() and the delivery thread deadlocked";
  d->flush();
  delete d;
}
