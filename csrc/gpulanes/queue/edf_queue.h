// Bounded, thread-safe per-model queue ordered by earliest deadline first (ties: lower id first,
// i.e. arrival order). Submitting threads push; the event loop pops. Every method takes the
// queue's own mutex for a short, allocation-light critical section, and none calls out while
// holding it, so the queue never participates in a lock-order cycle.
//
// T must expose `TimeNs deadline` and an integer `id` (gpulanes::Request does).
#pragma once

#include <algorithm>
#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "gpulanes/core/time.h"

namespace gpulanes {

template <class T>
class EdfQueue {
 public:
  using Ptr = std::unique_ptr<T>;

  explicit EdfQueue(std::size_t capacity) : capacity_(capacity) {}

  // Moves `item` in and returns true, or leaves it with the caller and returns false when the
  // queue holds `capacity` items already.
  bool try_push(Ptr& item) {
    std::lock_guard<std::mutex> lock(mu_);
    if (heap_.size() >= capacity_) return false;
    heap_.push_back(std::move(item));
    std::push_heap(heap_.begin(), heap_.end(), Later{});
    return true;
  }

  // Deadline of the most urgent item, if any.
  std::optional<TimeNs> earliest_deadline() const {
    std::lock_guard<std::mutex> lock(mu_);
    if (heap_.empty()) return std::nullopt;
    return heap_.front()->deadline;
  }

  // Removes up to `n` most urgent items, in EDF order.
  std::vector<Ptr> pop_up_to(std::size_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<Ptr> out;
    out.reserve(std::min(n, heap_.size()));
    while (out.size() < n && !heap_.empty()) out.push_back(pop_locked());
    return out;
  }

  // Removes every item whose deadline is at or before `t` (it can no longer be met by a
  // result produced at or after `t`), in EDF order.
  std::vector<Ptr> pop_due(TimeNs t) {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<Ptr> out;
    while (!heap_.empty() && heap_.front()->deadline <= t) out.push_back(pop_locked());
    return out;
  }

  // Removes everything, in EDF order.
  std::vector<Ptr> drain() { return pop_up_to(static_cast<std::size_t>(-1)); }

  std::size_t size() const {
    std::lock_guard<std::mutex> lock(mu_);
    return heap_.size();
  }
  std::size_t capacity() const { return capacity_; }

 private:
  // std heap is a max-heap: "a < b" must mean "b is more urgent".
  struct Later {
    bool operator()(const Ptr& a, const Ptr& b) const {
      if (a->deadline != b->deadline) return a->deadline > b->deadline;
      return a->id > b->id;
    }
  };

  Ptr pop_locked() {
    std::pop_heap(heap_.begin(), heap_.end(), Later{});
    Ptr top = std::move(heap_.back());
    heap_.pop_back();
    return top;
  }

  const std::size_t capacity_;  // max items held at once (the model's max_queue)
  mutable std::mutex mu_;       // guards heap_
  std::vector<Ptr> heap_;       // binary heap, most urgent at front
};

}  // namespace gpulanes
