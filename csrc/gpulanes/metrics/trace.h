// Per-request trace, recorded when RuntimeOptions.trace is on: one record per request when it
// reaches its final outcome. Any core thread may record; readers get a copy.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
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
  // Before model slot `slot` is reused: its records so far move to a new alias index (from
  // kFirstAlias on) that keeps the name `name` they were recorded under. Returns the alias, or
  // -1 when no record named the slot.
  int alias(int slot, const std::string& name) {
    std::lock_guard<std::mutex> lock(mu_);
    const int to = kFirstAlias + static_cast<int>(aliases_.size());
    bool any = false;
    for (TraceRecord& r : records_) {
      if (r.model == slot) {
        r.model = to;
        any = true;
      }
    }
    if (!any) return -1;
    aliases_.push_back(name);
    return to;
  }
  // snapshot() and the names of its aliases (by alias index), taken together.
  std::vector<TraceRecord> snapshot(std::map<int, std::string>& aliases) const {
    std::lock_guard<std::mutex> lock(mu_);
    for (std::size_t k = 0; k < aliases_.size(); ++k) {
      aliases[kFirstAlias + static_cast<int>(k)] = aliases_[k];
    }
    return records_;
  }

  static constexpr int kFirstAlias = 1 << 20;  // above every model slot

 private:
  mutable std::mutex mu_;               // guards records_ and aliases_
  std::vector<TraceRecord> records_;    // in recording order
  std::vector<std::string> aliases_;    // names of the aliases, from kFirstAlias
};

}  // namespace gpulanes
