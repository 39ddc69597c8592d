// Admission control: when the lane plan cannot serve a model's whole request rate, requests
// above the rate it placed are refused at submit (ErrorCode::kOverloaded) instead of being
// queued to miss their deadlines and delay the ones that could have made it. One token bucket
// per limited model, refilled at the placed rate and holding at most `burst_s` seconds of it.
// Threads: set_limits() from the planning thread, admit() from any submitting thread. A model
// without a limit costs one relaxed atomic load per submit.
#pragma once

#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>
#include <vector>

#include "gpulanes/core/time.h"

namespace gpulanes {

class Admission {
 public:
  explicit Admission(int n_models, double burst_s = 0.25)
      : burst_s_(burst_s), limit_(new std::atomic<double>[n_models]), buckets_(n_models) {
    for (int m = 0; m < n_models; ++m) limit_[m].store(-1.0, std::memory_order_relaxed);
  }

  // Requests/s admitted by model; < 0: no limit. Buckets of newly limited models start full.
  void set_limits(const std::vector<double>& limit, TimeNs now) {
    std::lock_guard<std::mutex> lock(mu_);
    for (std::size_t m = 0; m < buckets_.size(); ++m) {
      const double r = m < limit.size() ? limit[m] : -1.0;
      if (r >= 0 && limit_[m].load(std::memory_order_relaxed) < 0) {
        buckets_[m] = {std::max(1.0, r * burst_s_), now};
      }
      limit_[m].store(r, std::memory_order_release);
    }
  }

  // Model slot `m` starts over for another model: no limit until the next set_limits().
  void forget(int m) {
    std::lock_guard<std::mutex> lock(mu_);
    limit_[m].store(-1.0, std::memory_order_release);
    buckets_[m] = {};
  }

  double limit(int m) const { return limit_[m].load(std::memory_order_acquire); }

  // Takes a token for one request of `m` at `now`, if the model's limit leaves one.
  bool admit(int m, TimeNs now) {
    const double r = limit_[m].load(std::memory_order_acquire);
    if (r < 0) return true;
    std::lock_guard<std::mutex> lock(mu_);
    Bucket& b = buckets_[m];
    const double cap = std::max(1.0, r * burst_s_);
    b.tokens = std::min(cap, b.tokens + r * std::max<DurationNs>(0, now - b.at) / 1e9);
    b.at = std::max(b.at, now);
    if (b.tokens < 1.0) return false;
    b.tokens -= 1.0;
    return true;
  }

 private:
  struct Bucket {
    double tokens = 0;  // requests that may still enter now
    TimeNs at = 0;      // when tokens was last refilled
  };
  const double burst_s_;                         // bucket size, in seconds of the limit
  std::unique_ptr<std::atomic<double>[]> limit_; // by model; < 0: none
  std::mutex mu_;                                // guards buckets_
  std::vector<Bucket> buckets_;                  // by model
};

}  // namespace gpulanes
