// Log-linear histogram of non-negative integers (nanoseconds, batch sizes): exact below 64, then
// 64 buckets per power of two, so any percentile is within ~1.6% of the true value, recording is
// a few bit operations, and memory is fixed (~30 KB). Not thread-safe: the owner locks.
#pragma once

#include <array>
#include <cstdint>

namespace gpulanes {

class LogHistogram {
 public:
  void record(std::int64_t value);
  void merge(const LogHistogram& other);

  std::uint64_t count() const { return count_; }
  double mean() const { return count_ ? static_cast<double>(sum_) / count_ : 0.0; }
  std::int64_t min() const { return count_ ? min_ : 0; }
  std::int64_t max() const { return count_ ? max_ : 0; }
  // q in [0, 1]; the representative value of the bucket holding the q-th sample (0 if empty).
  double percentile(double q) const;

 private:
  static constexpr int kSubBits = 6;                    // 64 sub-buckets per octave
  static constexpr int kSub = 1 << kSubBits;
  static constexpr int kBuckets = (64 - kSubBits) * kSub;
  static int bucket_of(std::uint64_t v);
  static double value_of(int bucket);

  std::array<std::uint64_t, kBuckets> counts_{};  // samples per bucket
  std::uint64_t count_ = 0;                       // samples in total
  long double sum_ = 0;                           // for the mean (long double: no overflow)
  std::int64_t min_ = 0, max_ = 0;                // exact extremes
};

}  // namespace gpulanes
