// Bounded, thread-safe per-model queue, ordered by earliest deadline first (ties: lower id, i.e.
// arrival order) or by arrival alone, as the batch policy asks. Submitting threads push; only the
// event loop pops. Every method takes the queue's own mutex for a short critical section and none
// calls out while holding it, so the queue never takes part in a lock-order cycle.
//
// T must expose `TimeNs deadline`, `TimeNs arrival` and an increasing integer `id`
// (gpulanes::Request does).
#pragma once

#include <algorithm>
#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
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

  explicit RequestQueueT(std::size_t capacity, QueueOrder order = QueueOrder::kDeadline)
      : capacity_(capacity), later_{order} {}

  QueueOrder order() const { return later_.order; }

  // Moves `item` in and returns true, or leaves it with the caller and returns false when the
  // queue holds `capacity` items already.
  bool try_push(Ptr& item) {
    std::lock_guard<std::mutex> lock(mu_);
    if (heap_.size() >= capacity_) return false;
    heap_.push_back(std::move(item));
    std::push_heap(heap_.begin(), heap_.end(), later_);
    return true;
  }

  // The item that pops next, if any.
  std::optional<QueueHead> head() const {
    std::lock_guard<std::mutex> lock(mu_);
    if (heap_.empty()) return std::nullopt;
    return QueueHead{heap_.front()->deadline, heap_.front()->arrival};
  }

  // Deadline of the head (the earliest deadline in a kDeadline queue), if any.
  std::optional<TimeNs> earliest_deadline() const {
    auto h = head();
    return h ? std::optional<TimeNs>(h->deadline) : std::nullopt;
  }

  // Removes up to `n` items from the head, in queue order.
  std::vector<Ptr> pop_up_to(std::size_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<Ptr> out;
    out.reserve(std::min(n, heap_.size()));
    while (out.size() < n && !heap_.empty()) out.push_back(pop_locked());
    return out;
  }

  // Removes items from the head while `take(head)` holds, in queue order.
  template <class Pred>
  std::vector<Ptr> pop_while(Pred&& take) {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<Ptr> out;
    while (!heap_.empty() && take(static_cast<const T&>(*heap_.front()))) out.push_back(pop_locked());
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
    return heap_.size();
  }
  std::size_t capacity() const { return capacity_; }

 private:
  // std heap is a max-heap: "a < b" must mean "b pops first".
  struct Later {
    QueueOrder order;
    bool operator()(const Ptr& a, const Ptr& b) const {
      if (order == QueueOrder::kDeadline && a->deadline != b->deadline) {
        return a->deadline > b->deadline;
      }
      return a->id > b->id;
    }
  };

  Ptr pop_locked() {
    std::pop_heap(heap_.begin(), heap_.end(), later_);
    Ptr top = std::move(heap_.back());
    heap_.pop_back();
    return top;
  }

  const std::size_t capacity_;  // max items held at once (the model's max_queue)
  const Later later_;           // the ordering
  mutable std::mutex mu_;       // guards heap_
  std::vector<Ptr> heap_;       // binary heap, most urgent at front
};

}  // namespace gpulanes
