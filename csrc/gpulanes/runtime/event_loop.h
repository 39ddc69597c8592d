// The event loop owns every scheduling decision. It reacts to arrivals (wake), lanes going idle
// (lane_idle), timers (expiry, policy wake-ups) and stop. Each round, under its lock, it lets the
// policy fail the queued requests that must not run, then asks the policy for a batch for every
// idle lane and dispatches it. Failures it produces are handed to the LoopSink after the lock is
// released, so no completion ever runs under a core lock.
//
// Threads: one loop thread (start/stop) that sleeps until the next timer or event; any thread
// may call wake(); lane workers call lane_idle(). To save a thread hop on the latency path, the
// thread that brings an event runs the decision round itself when the loop lock is free (same
// step_locked(), same state, same lock), and only hands over to the loop thread when the lock is
// busy, when stopping, or when the round moved the next timer earlier. step_locked() is the
// whole decision round without waiting, so a simulator can drive it on virtual time.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "gpulanes/exec/lane.h"
#include "gpulanes/sched/batch_policy.h"

namespace gpulanes {

class Clock;

class LoopSink {
 public:
  virtual ~LoopSink() = default;
  // Requests the loop failed without running them. Called with no core lock held.
  virtual void fail(std::vector<RequestPtr>&& requests, ErrorCode code, const std::string& why) = 0;
  // `batch` (its id set) is about to be handed to `lane` at `now`. Called under the loop's lock:
  // bookkeeping only.
  virtual void on_dispatch(int /*lane*/, const Batch& /*batch*/, TimeNs /*now*/) {}
};

class EventLoop {
 public:
  EventLoop(const Clock& clock, SchedulingState state, std::vector<Lane*> lanes,
            BatchPolicy& policy, LoopSink& sink);
  ~EventLoop();

  // Runs the loop on its own thread (real time). Without start(), the owner drives it with
  // run_round() (virtual time).
  // Starts the loop thread, which runs `on_thread` first (e.g. to mark itself as the owner's).
  void start(std::function<void()> on_thread = {});
  // One decision round at the clock's current time, on the calling thread; delivers the
  // failures it produces. Returns when the loop next needs a round without an event.
  TimeNs run_round();
  // Feedback for the policy after a batch (any thread).
  void observe(const BatchObservation& obs);
  // Something changed (a request arrived): run a decision round soon.
  void wake();
  // `lane` finished its batch and can take another.
  void lane_idle(int lane);
  // Stops handing batches to lanes and returns once every lane is idle. Rounds keep running
  // (expiry, drops); queued requests stay queued until swap_lanes().
  void pause_until_idle();
  // The same without waiting (virtual time: the driver advances the clock until lanes_idle()).
  void pause();
  bool lanes_idle();
  // After pause_until_idle(): runs `swap` under the loop's lock, then serves `lanes` instead and
  // resumes. The old lanes get nothing more from the loop.
  void swap_lanes(std::vector<Lane*> lanes, const std::function<void()>& swap);
  // Stops the loop. drain: keep scheduling until the queues are empty; otherwise fail queued
  // requests with RuntimeClosed. Either way returns once every lane is idle. Submissions must
  // already be closed.
  void stop(bool drain);

 private:
  struct Failure {
    std::vector<RequestPtr> requests;
    ErrorCode code;
    std::string why;
  };
  void fail_models_without_a_healthy_lane(std::vector<Failure>& failures);
  void run();
  // Records an event; runs the round on the calling thread when the lock is free.
  void on_event(int idle_lane);
  // One decision round at `now`; returns when the loop next needs to run without an event.
  TimeNs step_locked(TimeNs now, std::vector<Failure>& failures);
  bool finished_locked() const;

  const Clock& clock_;         // time source for decisions
  SchedulingState state_;      // models and queues (queues are themselves thread-safe)
  std::vector<Lane*> lanes_;   // by lane index; owned by the runtime
  BatchPolicy& policy_;        // decides batches; called only under mu_
  LoopSink& sink_;             // receives failures

  std::mutex mu_;                 // guards the fields below and every policy call
  std::condition_variable cv_;    // signals pending_
  bool pending_ = false;          // an event arrived since the last round
  bool stopping_ = false;         // stop() was called
  bool drain_ = true;             // with stopping_: finish queued work first
  bool paused_ = false;           // pause_until_idle(): dispatch nothing until swap_lanes()
  std::condition_variable idle_cv_;  // signals a lane going idle (for pause_until_idle)
  std::vector<char> lane_idle_;   // per lane: may be dispatched to
  TimeNs loop_wake_at_ = kNever;  // when the sleeping loop thread will next wake by itself
  std::uint64_t next_batch_id_ = 1;
  std::thread thread_;            // the loop
};

}  // namespace gpulanes
