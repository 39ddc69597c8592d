#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "gpulanes/metrics/histogram.h"
#include "gpulanes/metrics/model_metrics.h"

using namespace gpulanes;

TEST(LogHistogram, PercentilesWithinTwoPercentOfExact) {
  std::mt19937_64 rng(7);
  std::lognormal_distribution<double> dist(13.0, 1.5);  // ~0.4 ms median in ns, heavy tail
  std::vector<std::int64_t> values;
  LogHistogram h;
  for (int i = 0; i < 200000; ++i) {
    auto v = static_cast<std::int64_t>(dist(rng));
    values.push_back(v);
    h.record(v);
  }
  std::sort(values.begin(), values.end());
  for (double q : {0.01, 0.5, 0.9, 0.99, 0.999}) {
    const double exact = values[static_cast<std::size_t>(std::ceil(q * values.size())) - 1];
    EXPECT_NEAR(h.percentile(q), exact, 0.02 * exact) << "q=" << q;
  }
  EXPECT_EQ(h.count(), values.size());
  EXPECT_EQ(h.min(), values.front());
  EXPECT_EQ(h.max(), values.back());
  EXPECT_DOUBLE_EQ(h.percentile(1.0), static_cast<double>(values.back()));
}

TEST(LogHistogram, SmallValuesExactAndMergeAdds) {
  LogHistogram a, b;
  for (int v = 1; v <= 32; ++v) a.record(v);
  EXPECT_EQ(a.percentile(0.5), 16);
  EXPECT_DOUBLE_EQ(a.mean(), 16.5);
  b.record(1000);
  a.merge(b);
  EXPECT_EQ(a.count(), 33u);
  EXPECT_EQ(a.max(), 1000);
  EXPECT_EQ(LogHistogram{}.percentile(0.5), 0.0);
}

TEST(ModelMetrics, ForwardTimePerBatchSizeAndTheLatestResult) {
  // What the statistics extension reports per batch size, and its last_inference.
  ModelMetrics m("m");
  m.on_batch(4, 1000, 0, 1000);
  m.on_batch(4, 3000, 0, 3000);
  m.on_batch(1, 500, 0, 500);
  m.on_result(/*arrival=*/10, /*started=*/20, /*end=*/900, /*deadline=*/1000);
  m.on_result(/*arrival=*/10, /*started=*/20, /*end=*/700, /*deadline=*/1000);  // ended earlier
  const ModelStats s = m.snapshot(/*now=*/1000, /*started_at=*/1);
  EXPECT_EQ(s.batch_sizes.at(4), 2u);
  EXPECT_DOUBLE_EQ(s.batch_exec_ns.at(4), 4000.0);
  EXPECT_DOUBLE_EQ(s.batch_exec_ns.at(1), 500.0);
  EXPECT_EQ(s.last_result, 900);
  EXPECT_EQ(ModelMetrics("fresh").snapshot(1000, 1).last_result, 0);
}
