#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "gpulanes/queue/request_queue.h"

using namespace gpulanes;

namespace {
struct Item {
  std::uint64_t id;
  TimeNs deadline;
  TimeNs arrival = 0;
};
std::unique_ptr<Item> item(std::uint64_t id, TimeNs d) { return std::make_unique<Item>(Item{id, d}); }
using EdfQueue = RequestQueueT<Item>;
}  // namespace

TEST(RequestQueue, PopsEarliestDeadlineFirstTiesByArrival) {
  EdfQueue q(100);
  const TimeNs deadlines[] = {50, 10, 30, 10, 40, 20, 30};
  for (std::uint64_t i = 0; i < 7; ++i) {
    auto p = item(i, deadlines[i]);
    ASSERT_TRUE(q.try_push(p));
    EXPECT_EQ(p, nullptr);
  }
  EXPECT_EQ(q.earliest_deadline(), 10);
  auto first = q.pop_up_to(3);
  ASSERT_EQ(first.size(), 3u);
  EXPECT_EQ(first[0]->id, 1u);  // deadline 10, earlier arrival
  EXPECT_EQ(first[1]->id, 3u);  // deadline 10
  EXPECT_EQ(first[2]->id, 5u);  // deadline 20
  auto rest = q.drain();
  std::vector<std::uint64_t> ids;
  for (auto& r : rest) ids.push_back(r->id);
  EXPECT_EQ(ids, (std::vector<std::uint64_t>{2, 6, 4, 0}));
  EXPECT_EQ(q.size(), 0u);
  EXPECT_FALSE(q.earliest_deadline().has_value());
}

TEST(RequestQueue, BoundRefusesAndLeavesItemWithCaller) {
  EdfQueue q(3);
  for (std::uint64_t i = 0; i < 3; ++i) {
    auto p = item(i, 100 - i);
    ASSERT_TRUE(q.try_push(p));
  }
  auto extra = item(99, 1);
  EXPECT_FALSE(q.try_push(extra));
  ASSERT_NE(extra, nullptr);
  EXPECT_EQ(extra->id, 99u);
  EXPECT_EQ(q.size(), 3u);
  q.pop_up_to(1);
  EXPECT_TRUE(q.try_push(extra));
  EXPECT_EQ(q.earliest_deadline(), 1);
}

TEST(RequestQueue, PopDueTakesOnlyExpired) {
  EdfQueue q(10);
  for (std::uint64_t i = 0; i < 6; ++i) {
    auto p = item(i, static_cast<TimeNs>(i * 10));
    q.try_push(p);
  }
  auto due = q.pop_due(25);
  ASSERT_EQ(due.size(), 3u);  // deadlines 0, 10, 20
  EXPECT_EQ(due.back()->deadline, 20);
  EXPECT_EQ(q.pop_due(29).size(), 0u);
  EXPECT_EQ(q.pop_due(30).size(), 1u);  // deadline == t is due
  EXPECT_EQ(q.size(), 2u);
}

TEST(RequestQueue, ManyProducersOneConsumerLoseNothingAndStayOrdered) {
  constexpr int kProducers = 8, kPerProducer = 20000;
  EdfQueue q(kProducers * kPerProducer);
  std::atomic<std::uint64_t> next{0};
  std::atomic<bool> done{false};
  std::vector<std::uint64_t> seen;
  std::thread consumer([&] {
    while (true) {
      auto batch = q.pop_up_to(64);
      for (std::size_t i = 1; i < batch.size(); ++i) {
        ASSERT_LE(batch[i - 1]->deadline, batch[i]->deadline);
      }
      for (auto& b : batch) seen.push_back(b->id);
      if (batch.empty() && done.load()) {
        if (q.size() == 0) return;
      }
    }
  });
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      std::mt19937_64 rng(p);
      for (int i = 0; i < kPerProducer; ++i) {
        auto it = item(next.fetch_add(1), static_cast<TimeNs>(rng() % 1000000));
        ASSERT_TRUE(q.try_push(it));
      }
    });
  }
  for (auto& t : producers) t.join();
  done = true;
  consumer.join();
  ASSERT_EQ(seen.size(), static_cast<std::size_t>(kProducers * kPerProducer));
  std::set<std::uint64_t> unique(seen.begin(), seen.end());
  EXPECT_EQ(unique.size(), seen.size());
  EXPECT_EQ(*unique.rbegin(), static_cast<std::uint64_t>(kProducers * kPerProducer - 1));
}

TEST(RequestQueue, ConcurrentPushesNeverExceedCapacity) {
  constexpr std::size_t kCap = 1000;
  EdfQueue q(kCap);
  std::atomic<int> accepted{0}, refused{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 8; ++t) {
    ts.emplace_back([&, t] {
      for (int i = 0; i < 500; ++i) {
        auto it = item(t * 1000 + i, i);
        (q.try_push(it) ? accepted : refused)++;
      }
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(accepted.load(), static_cast<int>(kCap));
  EXPECT_EQ(refused.load(), 8 * 500 - static_cast<int>(kCap));
  EXPECT_EQ(q.size(), kCap);
}

TEST(RequestQueue, ArrivalOrderIgnoresDeadlinesAndPopWhileStopsAtHead) {
  RequestQueueT<Item> q(10, QueueOrder::kArrival);
  const TimeNs deadlines[] = {50, 10, 30, 5};
  for (std::uint64_t i = 0; i < 4; ++i) {
    auto p = item(i, deadlines[i]);
    q.try_push(p);
  }
  EXPECT_EQ(q.head()->deadline, 50);  // the oldest, not the most urgent
  EXPECT_TRUE(q.pop_due(20).empty());  // the head (deadline 50) is still in time
  auto two = q.pop_while([](const Item& it) { return it.id < 2; });
  ASSERT_EQ(two.size(), 2u);
  EXPECT_EQ(two[0]->id, 0u);
  EXPECT_EQ(two[1]->id, 1u);
  EXPECT_EQ(q.pop_due(40).size(), 2u);  // heads 2 (30) and 3 (5) are both due
}

namespace {
struct PItem {
  std::uint64_t id;
  TimeNs deadline;
  int priority;
  TimeNs arrival = 0;
};
}  // namespace

TEST(RequestQueue, PriorityClassesMergeInDeadlineOrderAndCanBeTakenAlone) {
  RequestQueueT<PItem> q(100);
  // (deadline, priority) by id
  const std::pair<TimeNs, int> items[] = {{30, 0}, {10, 1}, {20, 1}, {40, 0}, {15, 0}, {50, 1}};
  for (std::uint64_t i = 0; i < 6; ++i) {
    auto p = std::make_unique<PItem>(PItem{i, items[i].first, items[i].second});
    ASSERT_TRUE(q.try_push(p));
  }
  // Queue order: 1(10,be) 4(15) 2(20,be) 0(30) 3(40) 5(50,be)
  EXPECT_EQ(q.size(0), 3u);
  EXPECT_EQ(q.size(1), 3u);
  EXPECT_EQ(q.earliest_deadline(), 10);
  EXPECT_EQ(q.count_in_first(3, 1), 2u);
  EXPECT_EQ(q.count_in_first(100, 0), 3u);
  EXPECT_EQ(q.deadline_after(0, 0), 15);  // most urgent critical
  EXPECT_EQ(q.deadline_after(2, 0), 30);  // the first two hold the critical one due at 15
  EXPECT_EQ(q.deadline_after(5, 0), std::nullopt);
  EXPECT_EQ(q.deadline_after(3, 1), 50);
  auto critical = q.pop_up_to(2, 0);
  ASSERT_EQ(critical.size(), 2u);
  EXPECT_EQ(critical[0]->id, 4u);
  EXPECT_EQ(critical[1]->id, 0u);
  std::vector<std::uint64_t> rest;
  for (auto& r : q.drain()) rest.push_back(r->id);
  EXPECT_EQ(rest, (std::vector<std::uint64_t>{1, 2, 3, 5}));
}

TEST(RequestQueue, CapacityCountsBothClasses) {
  RequestQueueT<PItem> q(2);
  auto a = std::make_unique<PItem>(PItem{0, 5, 0});
  auto b = std::make_unique<PItem>(PItem{1, 5, 1});
  auto c = std::make_unique<PItem>(PItem{2, 1, 0});
  ASSERT_TRUE(q.try_push(a));
  ASSERT_TRUE(q.try_push(b));
  EXPECT_FALSE(q.try_push(c));
  auto due = q.pop_due(5);
  ASSERT_EQ(due.size(), 2u);
  EXPECT_EQ(due[0]->id, 0u);  // same deadline: lower id first, across classes
}
