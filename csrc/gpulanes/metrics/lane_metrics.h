// Per-lane counters: what ran on the lane and how much of the time since start it was busy.
// Written by the lane's worker (one writer) once per batch, read by stats() from any thread.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "gpulanes/core/time.h"
#include "gpulanes/metrics/histogram.h"

namespace gpulanes {

struct LaneStats {
  int index = -1;
  std::string kind;             // "cpu", "cuda-stream", "virtual", ...
  std::string device;           // "cpu", "cuda:0", ...
  std::uint64_t batches = 0;    // batches run
  std::uint64_t requests = 0;   // requests in them
  std::uint64_t met = 0;        // results at or before their deadline
  std::uint64_t missed = 0;     // results after their deadline
  std::uint64_t failed = 0;     // requests whose batch raised
  double busy_s = 0;            // sum of batch durations (start to outputs ready)
  double elapsed_s = 0;         // since the runtime started
  double busy_fraction = 0;     // busy_s / elapsed_s
  double mean_batch_size = 0;   // requests / batches
  LogHistogram batch_ns;        // batch duration
  std::map<std::string, std::uint64_t> batches_by_model;  // model name -> batches
};

class LaneMetrics {
 public:
  LaneMetrics(int index, std::string kind, std::string device)
      : index_(index), kind_(std::move(kind)), device_(std::move(device)) {}

  void on_batch(const std::string& model, int size, int met, int missed, int failed,
                DurationNs duration_ns);
  LaneStats snapshot(TimeNs now, TimeNs started_at) const;

 private:
  const int index_;
  const std::string kind_, device_;

  mutable std::mutex mu_;  // guards everything below
  std::uint64_t batches_ = 0, requests_ = 0, met_ = 0, missed_ = 0, failed_ = 0;
  DurationNs busy_ns_ = 0;
  LogHistogram batch_ns_;
  std::map<std::string, std::uint64_t> by_model_;
};

}  // namespace gpulanes
