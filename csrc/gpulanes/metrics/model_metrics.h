// Per-model counters and distributions. Submit-path counters are atomics (many submitting
// threads, no lock); completion-path data is recorded once per batch under a small mutex by the
// lane worker or the event loop. snapshot() may be called from any thread at any time.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "gpulanes/core/time.h"
#include "gpulanes/metrics/histogram.h"
#include "gpulanes/metrics/prediction_error.h"

namespace gpulanes {

// A consistent-enough copy for reporting. Invariant (exact once nothing is in flight):
// submitted == met + missed + dropped + rejected + failed + in_flight.
struct ModelStats {
  std::string name;
  std::uint64_t submitted = 0;  // submit() calls that named this model
  std::uint64_t rejected = 0;   // refused at submit (bad input, past deadline, queue full, closed)
  std::uint64_t completed = 0;  // ran and returned a result (met + missed)
  std::uint64_t met = 0;        // result at or before the deadline
  std::uint64_t missed = 0;     // result after the deadline
  std::uint64_t dropped = 0;    // failed with DeadlineExceeded without running
  std::uint64_t failed = 0;     // ModelError, or RuntimeClosed by shutdown(drain=false)
  std::uint64_t in_flight = 0;  // accepted, not finished yet
  std::uint64_t batches = 0;    // batches run (successful or not)
  std::uint64_t reruns = 0;     // extra runs of parts of failed batches, to find the culprits
  double elapsed_s = 0;         // since the runtime started
  double goodput = 0;           // met / elapsed_s
  double throughput = 0;        // completed / elapsed_s
  LogHistogram latency_ns;      // arrival -> result, completed requests
  LogHistogram queue_ns;        // arrival -> batch start, requests that ran
  LogHistogram exec_ns;         // forward time per batch
  std::map<int, std::uint64_t> batch_sizes;  // batch size -> batches
  std::map<int, double> batch_exec_ns;       // batch size -> forward time of those batches, summed
  TimeNs last_result = 0;                    // end of the latest result (0: none yet)
  double mean_batch_size = 0;                // requests per batch run
  PredictionErrorStats prediction;           // batch latency: policy's prediction vs measured
};

class ModelMetrics {
 public:
  explicit ModelMetrics(std::string name) : name_(std::move(name)) {}

  void on_submitted() { submitted_.fetch_add(1, std::memory_order_relaxed); }
  void on_rejected() { rejected_.fetch_add(1, std::memory_order_relaxed); }

  // One request finished with a result at `end`.
  void on_result(TimeNs arrival, TimeNs started, TimeNs end, TimeNs deadline);
  // One request failed without a result (dropped: DeadlineExceeded, else failed).
  void on_failure(bool dropped);
  // One batch ran: its executor time, and the policy's latency prediction (0: none) against the
  // lane's measured start-to-outputs time.
  // `reruns`: runs of parts of it after it failed as a whole.
  void on_batch(int size, DurationNs exec_ns, DurationNs predicted_ns, DurationNs actual_ns,
                int reruns = 0);

  ModelStats snapshot(TimeNs now, TimeNs started_at) const;
  // snapshot().in_flight alone.
  std::uint64_t in_flight() const;

 private:
  const std::string name_;
  std::atomic<std::uint64_t> submitted_{0};
  std::atomic<std::uint64_t> rejected_{0};

  mutable std::mutex mu_;  // guards everything below
  std::uint64_t met_ = 0, missed_ = 0, dropped_ = 0, failed_ = 0, batches_ = 0, reruns_ = 0;
  LogHistogram latency_ns_, queue_ns_, exec_ns_;
  std::map<int, std::uint64_t> batch_sizes_;
  std::map<int, long double> batch_exec_ns_;  // batch size -> summed forward time
  TimeNs last_result_ = 0;
  PredictionErrorWindow prediction_;
};

}  // namespace gpulanes
