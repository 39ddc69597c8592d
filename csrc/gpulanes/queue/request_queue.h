// Bounded, thread-safe per-model queue, ordered by earliest deadline first (ties: lower id, i.e.
// arrival order) or by arrival alone, as the batch policy asks. Submitting threads push; only the
// event loop pops. Every method takes the queue's own mutex for a short critical section and none
// calls out while holding it (predicates passed in must only read the item), so the queue never
// takes part in a lock-order cycle.
//
// Items belong to one of two priority classes (0 = latency-critical, 1 = best effort), each kept
// sorted; "queue order" is the merge of both, so a policy that ignores priorities sees one EDF
// (or FIFO) queue, and one that honours them can look at, and take from, a class alone.
//
// T must expose `TimeNs deadline`, `TimeNs arrival` and an increasing integer `id`
// (gpulanes::Request does); an `int priority` member is optional (absent: class 0).
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <vector>

#include "gpulanes/core/time.h"

namespace gpulanes {

enum class QueueOrder {
  kDeadline,  // earliest deadline first (EDF)
  kArrival,   // first come, first served
};

// What a policy may read about the item at the head without taking it.
struct QueueHead {
  TimeNs deadline;
  TimeNs arrival;
};

template <class T>
class RequestQueueT {
 public:
  using Ptr = std::unique_ptr<T>;
  static constexpr int kClasses = 2;

  explicit RequestQueueT(std::size_t capacity, QueueOrder order = QueueOrder::kDeadline)
      : capacity_(capacity),
        order_(order),
        classes_{Class(Earlier{order}), Class(Earlier{order})} {}

  QueueOrder order() const { return order_; }

  // Moves `item` in and returns true, or leaves it with the caller and returns false when the
  // queue holds `capacity` items already.
  bool try_push(Ptr& item) {
    std::lock_guard<std::mutex> lock(mu_);
    if (size_locked() >= capacity_) return false;
    const int c = class_of(*item);
    classes_[c].insert(std::move(item));
    return true;
  }

  // The item that pops next, if any.
  std::optional<QueueHead> head() const {
    std::lock_guard<std::mutex> lock(mu_);
    const int c = next_class_locked();
    if (c < 0) return std::nullopt;
    const T& h = **classes_[c].begin();
    return QueueHead{h.deadline, h.arrival};
  }

  // Deadline of the head (the earliest deadline in a kDeadline queue), if any.
  std::optional<TimeNs> earliest_deadline() const {
    auto h = head();
    return h ? std::optional<TimeNs>(h->deadline) : std::nullopt;
  }

  // Deadline of the first item of class `priority` that is not among the first `n` items in queue
  // order (the class's most urgent item a batch of the first n would leave behind), if any.
  std::optional<TimeNs> deadline_after(std::size_t n, int priority) const {
    std::lock_guard<std::mutex> lock(mu_);
    std::array<std::size_t, kClasses> taken{};
    walk_locked(n, [&](int c) { ++taken[c]; });
    const Class& cls = classes_[priority];
    if (taken[priority] >= cls.size()) return std::nullopt;
    return (*std::next(cls.begin(), static_cast<std::ptrdiff_t>(taken[priority])))->deadline;
  }

  // How many of the first `n` items in queue order are of class `priority`.
  std::size_t count_in_first(std::size_t n, int priority) const {
    std::lock_guard<std::mutex> lock(mu_);
    std::size_t k = 0;
    walk_locked(n, [&](int c) { k += c == priority; });
    return k;
  }

  // Removes up to `n` items from the head, in queue order.
  std::vector<Ptr> pop_up_to(std::size_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<Ptr> out;
    out.reserve(std::min(n, size_locked()));
    for (int c; out.size() < n && (c = next_class_locked()) >= 0;) out.push_back(pop_locked(c));
    return out;
  }

  // Removes up to `n` items of class `priority` alone, in queue order.
  std::vector<Ptr> pop_up_to(std::size_t n, int priority) {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<Ptr> out;
    while (out.size() < n && !classes_[priority].empty()) out.push_back(pop_locked(priority));
    return out;
  }

  // Removes items from the head while `take(head)` holds, in queue order.
  template <class Pred>
  std::vector<Ptr> pop_while(Pred&& take) {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<Ptr> out;
    for (int c; (c = next_class_locked()) >= 0 &&
                take(static_cast<const T&>(**classes_[c].begin()));) {
      out.push_back(pop_locked(c));
    }
    return out;
  }

  // Removes every item whose deadline is at or before `t`, from the head, in queue order (in a
  // kArrival queue it stops at the first head still in time).
  std::vector<Ptr> pop_due(TimeNs t) {
    return pop_while([t](const T& item) { return item.deadline <= t; });
  }

  // Removes everything, in queue order.
  std::vector<Ptr> drain() { return pop_up_to(static_cast<std::size_t>(-1)); }

  std::size_t size() const {
    std::lock_guard<std::mutex> lock(mu_);
    return size_locked();
  }
  // Items of class `priority`.
  std::size_t size(int priority) const {
    std::lock_guard<std::mutex> lock(mu_);
    return classes_[priority].size();
  }
  std::size_t capacity() const { return capacity_; }

 private:
  struct Earlier {
    QueueOrder order;
    bool operator()(const Ptr& a, const Ptr& b) const {
      if (order == QueueOrder::kDeadline && a->deadline != b->deadline) {
        return a->deadline < b->deadline;
      }
      return a->id < b->id;
    }
  };
  using Class = std::set<Ptr, Earlier>;

  static int class_of(const T& item) {
    if constexpr (requires { item.priority; }) {
      return item.priority > 0 ? 1 : 0;
    } else {
      return 0;
    }
  }
  std::size_t size_locked() const { return classes_[0].size() + classes_[1].size(); }
  // The class whose first item pops next, or -1 when empty.
  int next_class_locked() const {
    if (classes_[1].empty()) return classes_[0].empty() ? -1 : 0;
    if (classes_[0].empty()) return 1;
    return Earlier{order_}(*classes_[1].begin(), *classes_[0].begin()) ? 1 : 0;
  }
  // Calls visit(class) for each of the first `n` items in queue order, without removing them.
  template <class Visit>
  void walk_locked(std::size_t n, Visit&& visit) const {
    std::array<typename Class::const_iterator, kClasses> it{classes_[0].begin(), classes_[1].begin()};
    for (std::size_t i = 0; i < n; ++i) {
      const bool has0 = it[0] != classes_[0].end(), has1 = it[1] != classes_[1].end();
      if (!has0 && !has1) return;
      const int c = !has0 ? 1 : !has1 ? 0 : Earlier{order_}(*it[1], *it[0]) ? 1 : 0;
      visit(c);
      ++it[c];
    }
  }
  Ptr pop_locked(int c) {
    auto node = classes_[c].extract(classes_[c].begin());
    return std::move(node.value());
  }

  const std::size_t capacity_;           // max items held at once (the model's max_queue)
  const QueueOrder order_;               // the ordering within and across classes
  mutable std::mutex mu_;                // guards classes_
  std::array<Class, kClasses> classes_;  // by priority, each sorted most urgent first
};

}  // namespace gpulanes
