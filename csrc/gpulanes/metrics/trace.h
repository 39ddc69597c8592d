// Per-request trace, recorded when RuntimeOptions.trace is on: one record per request when it
// reaches its final outcome. Any core thread may record; readers get a copy.
#pragma once

#include <cstdint>
#include <mutex>
#include <vector>

#include "gpulanes/core/error.h"
#include "gpulanes/core/time.h"

namespace gpulanes {

enum class TraceOutcome { kMet, kMissed, kDropped, kRejected, kFailed };

inline const char* trace_outcome_name(TraceOutcome o) {
  switch (o) {
    case TraceOutcome::kMet: return "met";
    case TraceOutcome::kMissed: return "missed";
    case TraceOutcome::kDropped: return "dropped";
    case TraceOutcome::kRejected: return "rejected";
    case TraceOutcome::kFailed: return "failed";
  }
  return "failed";
}

struct TraceRecord {
  std::uint64_t request = 0;  // request id (0 for a request refused before it got one)
  int model = -1;
  TimeNs arrival = 0;
  TimeNs start = 0;           // batch start; 0 if it never ran
  TimeNs end = 0;             // when the outcome was decided
  TimeNs deadline = 0;
  std::int64_t batch = -1;    // batch id; -1 if it never ran
  int lane = -1;
  int batch_size = 0;
  TraceOutcome outcome = TraceOutcome::kFailed;
};

class TraceRecorder {
 public:
  void add(const TraceRecord& r) {
    std::lock_guard<std::mutex> lock(mu_);
    records_.push_back(r);
  }
  void add(const std::vector<TraceRecord>& rs) {
    std::lock_guard<std::mutex> lock(mu_);
    records_.insert(records_.end(), rs.begin(), rs.end());
  }
  std::vector<TraceRecord> snapshot() const {
    std::lock_guard<std::mutex> lock(mu_);
    return records_;
  }

 private:
  mutable std::mutex mu_;               // guards records_
  std::vector<TraceRecord> records_;    // in recording order
};

}  // namespace gpulanes
