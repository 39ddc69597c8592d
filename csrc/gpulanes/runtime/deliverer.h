// Completes requests whose callbacks need the delivery hook (the Python binding's: the GIL) on a
// thread of its own, so that a lane worker goes straight back to its next batch instead of
// queueing for the GIL behind whatever Python code holds it. The hook is taken once for all the
// outcomes pending at that moment, so under load one GIL acquisition serves several batches.
//
// Owns its thread and its FIFO of pending outcomes. Any thread may post(); the owning Runtime
// calls stop() once its loop and lanes have stopped (nothing posts concurrently then), which
// delivers what is pending and joins. After stop(), post() delivers on the calling thread.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "gpulanes/core/request.h"

namespace gpulanes {

// Runs `deliver` (which resolves futures) in whatever context completions need; the Python
// binding takes the GIL here. Never called with a core lock held.
using DeliveryHook = std::function<void(const std::function<void()>& deliver)>;

class Deliverer {
 public:
  // `on_thread` runs first on the delivery thread (the runtime marks it as its own).
  Deliverer(DeliveryHook hook, const std::function<void()>& on_thread);
  ~Deliverer();
  Deliverer(const Deliverer&) = delete;
  Deliverer& operator=(const Deliverer&) = delete;

  // Completes requests[i] with outcomes[i] later, in posting order.
  void post(std::vector<RequestPtr> requests, std::vector<Outcome> outcomes);
  // Returns once everything posted before the call was delivered. Not from the delivery thread.
  void flush();
  // Delivers everything posted so far, then joins the thread. Idempotent; not from the
  // delivery thread itself (the runtime's shutdown is deferred off its own threads).
  void stop();

 private:
  struct Pending {
    std::vector<RequestPtr> requests;
    std::vector<Outcome> outcomes;
  };
  void run();
  void deliver(std::vector<Pending>& batch);

  const DeliveryHook hook_;
  std::mutex mu_;                 // guards pending_ and stop_
  std::condition_variable cv_;    // wakes the thread: work posted or stop
  std::condition_variable done_cv_;  // wakes flush(): a round was delivered
  std::vector<Pending> pending_;  // posted, not yet taken by the thread
  std::uint64_t posted_ = 0;      // post() calls so far
  std::uint64_t delivered_ = 0;   // ...of which the thread delivered
  bool stop_ = false;             // deliver what is pending, then return
  std::thread thread_;            // runs run()
};

}  // namespace gpulanes
