#include "gpulanes/metrics/histogram.h"

#include <algorithm>
#include <bit>
#include <cmath>

namespace gpulanes {

int LogHistogram::bucket_of(std::uint64_t v) {
  if (v < static_cast<std::uint64_t>(kSub)) return static_cast<int>(v);
  const int msb = 63 - std::countl_zero(v);            // >= kSubBits
  const int shift = msb - kSubBits;
  const int sub = static_cast<int>((v >> shift) & (kSub - 1));
  return (shift + 1) * kSub + sub;
}

double LogHistogram::value_of(int bucket) {
  if (bucket < kSub) return bucket;
  const int shift = bucket / kSub - 1;
  const int sub = bucket % kSub;
  const double lo = std::ldexp(static_cast<double>(kSub + sub), shift);
  const double width = std::ldexp(1.0, shift);
  return lo + (width - 1) / 2;  // middle of [lo, lo + width)
}

void LogHistogram::record(std::int64_t value) {
  const std::uint64_t v = value < 0 ? 0 : static_cast<std::uint64_t>(value);
  counts_[bucket_of(v)]++;
  if (count_ == 0) {
    min_ = max_ = static_cast<std::int64_t>(v);
  } else {
    min_ = std::min<std::int64_t>(min_, v);
    max_ = std::max<std::int64_t>(max_, v);
  }
  count_++;
  sum_ += v;
}

void LogHistogram::merge(const LogHistogram& other) {
  if (other.count_ == 0) return;
  for (int i = 0; i < kBuckets; ++i) counts_[i] += other.counts_[i];
  min_ = count_ ? std::min(min_, other.min_) : other.min_;
  max_ = count_ ? std::max(max_, other.max_) : other.max_;
  count_ += other.count_;
  sum_ += other.sum_;
}

double LogHistogram::percentile(double q) const {
  if (count_ == 0) return 0.0;
  q = std::clamp(q, 0.0, 1.0);
  // rank of the sample we want, 1-based, so q=1 is the largest and q=0 the smallest
  const std::uint64_t rank = std::max<std::uint64_t>(1, static_cast<std::uint64_t>(std::ceil(q * count_)));
  if (rank >= count_) return static_cast<double>(max_);  // the extremes are kept exactly
  if (rank == 1 && q == 0.0) return static_cast<double>(min_);
  std::uint64_t seen = 0;
  for (int i = 0; i < kBuckets; ++i) {
    seen += counts_[i];
    if (seen >= rank) {
      return std::clamp(value_of(i), static_cast<double>(min_), static_cast<double>(max_));
    }
  }
  return static_cast<double>(max_);
}

}  // namespace gpulanes
