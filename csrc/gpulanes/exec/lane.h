// A lane runs batches one at a time: a CPU thread pool, a CUDA stream, later a GPU partition, or
// a simulated device. The event loop hands it a batch only while it is idle; the lane reports
// every finished batch to its LaneListener.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "gpulanes/core/batch.h"
#include "gpulanes/core/request.h"
#include "gpulanes/core/time.h"
#include "gpulanes/exec/executor.h"

namespace gpulanes {

class Clock;

// What a lane reports about a finished batch, with one outcome per request.
struct BatchReport {
  int lane = -1;
  TimeNs start = 0;        // when the worker took the batch
  TimeNs end = 0;          // when outputs were ready (before delivery)
  DurationNs exec_ns = 0;  // the executor's forward (+ copies) time: device time (CUDA events)
                           // where the executor measures it, else wall time
  bool ok = false;         // false when the model raised or its output could not be split
  DurationNs predicted_ns = 0;  // the policy's prediction for this batch (0: none)
  int reruns = 0;          // runs of parts of the batch after it failed whole (culprit search)
};

class LaneListener {
 public:
  virtual ~LaneListener() = default;
  // Called on the lane's worker thread, with no lane lock held. `outcomes[i]` belongs to
  // `batch.requests[i]`. The lane takes no new batch before this returns.
  virtual void on_batch_finished(Batch&& batch, std::vector<Outcome>&& outcomes,
                                 const BatchReport& report) = 0;
};

class Lane {
 public:
  virtual ~Lane() = default;
  virtual int index() const = 0;
  virtual const std::string& kind() const = 0;  // "cpu", "cuda-stream", "virtual", ...
  virtual std::string device() const = 0;       // "cpu", "cuda:0", ...
  // The executor that runs forward passes, or null for a lane without one (virtual).
  virtual Executor* executor() { return nullptr; }
  // Whether this lane runs `model` (the scheduler gives it no other model's batches).
  virtual bool serves(int /*model*/) const { return true; }
  // The device it runs on (lanes of one device interfere; -1: the CPU), the SMs it owns (0 on
  // the CPU) and its share of that device's SMs.
  virtual int device_index() const { return -1; }
  virtual int sms() const { return 0; }
  virtual double sm_share() const { return 1.0; }
  // False once the lane gave up (a process lane whose worker kept dying): the event loop hands
  // it nothing more.
  virtual bool healthy() const { return true; }
  // Begins serving; runs `init` on the lane's own thread first when it has one. `listener`
  // must outlive stop(). Rethrows what `init` threw.
  virtual void start(LaneListener* listener, const std::function<void()>& init) = 0;
  // Hands the lane its next batch. Only the event loop calls this, and only while the lane is
  // idle (it has reported its previous batch).
  virtual void dispatch(Batch&& batch) = 0;
  // Lets a batch in progress finish, then stops. Idempotent.
  virtual void stop() = 0;
};

// Where a WorkerLane runs and what it serves.
struct LanePlacement {
  int device = -1;            // CUDA device index, -1 for the CPU
  int sms = 0;                // SMs the lane owns (the whole device for a plain stream lane)
  int device_sms = 0;         // SMs of the device
  std::vector<char> serves;   // by model index; empty: every model
  std::shared_ptr<void> partition;  // what owns the lane's SMs and stream (a GreenPartition)
};

// A lane with one worker thread that runs batches on an Executor. Threads: the event loop calls
// dispatch(); the worker runs the batch and reports to the LaneListener; start/stop come from the
// runtime's control thread. Shutdown is: set flag, notify, join (a batch in progress finishes).
class WorkerLane final : public Lane {
 public:
  // `spin_ns`: how long an idle worker polls for its next batch before it sleeps; a batch that
  // arrives meanwhile starts without a thread wake-up (tens of microseconds on a VM).
  WorkerLane(int index, std::string kind, std::unique_ptr<Executor> executor, const Clock& clock,
             DurationNs spin_ns = 0, LanePlacement placement = {});
  ~WorkerLane() override;
  WorkerLane(const WorkerLane&) = delete;
  WorkerLane& operator=(const WorkerLane&) = delete;

  int index() const override { return index_.load(std::memory_order_relaxed); }
  const std::string& kind() const override { return kind_; }
  std::string device() const override { return executor_->device(); }
  Executor* executor() override { return executor_.get(); }
  bool serves(int model) const override;
  // A layout change that keeps this lane: its position in the new lane list and the models it
  // serves there (by index; empty: every model). Only while the lane is idle and the event
  // loop paused (EventLoop::swap_lanes), so no batch sees either change half way.
  void relocate(int index, std::vector<char> serves);
  // The models it serves, by index (empty: every model).
  std::vector<char> serves_list() const;
  int device_index() const override { return placement_.device; }
  int sms() const override { return placement_.sms; }
  double sm_share() const override;
  bool healthy() const override { return !executor_->broken(); }

  // The worker first runs `init` (loading and warming up models, so that thread-local state such
  // as the CPU thread pool's team belongs to the serving thread), then serves. Blocks until
  // `init` has run; if it threw, joins the worker and rethrows.
  void start(LaneListener* listener, const std::function<void()>& init) override;
  void dispatch(Batch&& batch) override;
  void stop() override;

 private:
  void worker();
  void run_batch(Batch&& batch);
  // Runs requests[lo, hi) of `batch` as one batch into outcomes[lo, hi). When a batch of more
  // than one fails, runs each half again while a request in it can still make its deadline, so
  // that only requests whose own input makes the model raise get ModelError; counts re-runs.
  void run_part(const Batch& batch, std::size_t lo, std::size_t hi, std::vector<Outcome>& outcomes,
                BatchReport& report);

  std::atomic<int> index_;              // position in the runtime's lane list (relocate())
  const std::string kind_;              // "cpu", "cuda-stream", ...
  std::unique_ptr<Executor> executor_;  // device-specific forward
  const Clock& clock_;                  // the runtime's clock
  LaneListener* listener_ = nullptr;    // receives finished batches; set by start()
  const DurationNs spin_ns_;            // idle polling budget before sleeping
  LanePlacement placement_;             // device and SMs (fixed), models served (relocate())
  mutable std::mutex serves_mu_;        // guards placement_.serves: read by control calls
  std::atomic<bool> has_next_{false};   // next_ is set; lets the idle worker poll without mu_
  std::atomic<bool> stopping_{false};   // stop() was called; ends idle polling early

  std::mutex mu_;                // guards the fields below
  std::condition_variable cv_;   // signals next_ or stop_
  std::unique_ptr<Batch> next_;  // dispatched, not yet taken by the worker
  bool stop_ = false;            // set by stop()
  std::thread thread_;           // the worker
};

}  // namespace gpulanes
