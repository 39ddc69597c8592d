// Regressors and co-location features: exact recovery, tracking, guards, hand-computed features.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "gpulanes/predict/colocation.h"
#include "gpulanes/predict/regressors.h"

using namespace gpulanes;

namespace {

Eigen::VectorXd random_x(std::mt19937_64& rng, int dim) {
  std::normal_distribution<double> n(0, 1);
  Eigen::VectorXd x(dim);
  for (int i = 0; i < dim; ++i) x[i] = n(rng);
  return x;
}

}  // namespace

TEST(Rls, RecoversKnownWeightsFromNoiselessData) {
  Eigen::VectorXd w(5);
  w << 0.5, -1.0, 2.0, 0.0, 3.25;
  Rls rls(5, /*forgetting=*/1.0, /*delta=*/1e8);  // a negligible prior
  std::mt19937_64 rng(1);
  for (int i = 0; i < 200; ++i) {
    const Eigen::VectorXd x = random_x(rng, 5);
    rls.update(x, w.dot(x));
  }
  EXPECT_LT((rls.weights() - w).cwiseAbs().maxCoeff(), 1e-6);
}

TEST(Rls, ForgettingTracksAWeightChangeAndOneDoesNot) {
  Eigen::VectorXd before(3), after(3);
  before << 1.0, 2.0, 3.0;
  after << 1.0, 4.0, -1.0;
  auto run = [&](double forgetting) {
    Rls rls(3, forgetting, 1e3);
    std::mt19937_64 rng(2);
    for (int i = 0; i < 1000; ++i) {
      const Eigen::VectorXd x = random_x(rng, 3);
      rls.update(x, before.dot(x));
    }
    for (int i = 0; i < 400; ++i) {
      const Eigen::VectorXd x = random_x(rng, 3);
      rls.update(x, after.dot(x));
    }
    return (rls.weights() - after).cwiseAbs().maxCoeff();
  };
  EXPECT_LT(run(0.95), 1e-5);  // old samples now weigh 0.95^400 ~ 1e-9
  EXPECT_GT(run(1.0), 0.1);    // without forgetting, 1000 old samples outweigh 400 new ones
}

TEST(Rls, CovarianceStaysBoundedAndBadSamplesAreIgnored) {
  Rls rls(2, 0.9, /*delta=*/1.0, /*max_eigenvalue=*/1e4);
  Eigen::VectorXd w0(2);
  w0 << 1.0, 2.0;
  rls.set_weights(w0);
  const Eigen::VectorXd zero = Eigen::VectorXd::Zero(2);
  for (int i = 0; i < 500; ++i) rls.update(zero, 0.0);  // no excitation: P grows as 0.9^-n
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(rls.covariance());
  EXPECT_LE(eig.eigenvalues().maxCoeff(), 1e4 * (1 + 1e-9));
  EXPECT_TRUE(rls.covariance().allFinite());
  Eigen::VectorXd bad(2);
  bad << std::nan(""), 1.0;
  rls.update(bad, 1.0);
  rls.update(Eigen::VectorXd::Ones(2), std::nan(""));
  EXPECT_TRUE(rls.weights().allFinite());
  EXPECT_EQ(rls.weights(), w0);
}

TEST(Rls, KeepsAdaptingWhenSomeFeaturesAreNeverExcited) {
  // x = (1, 0.5, u): the first two columns are collinear, so forgetting winds up the covariance
  // along their difference. After 20,000 samples the weight of u changes; RLS must still follow
  // as forgetting allows: old samples weigh 0.99^1000 ~ 4e-5 after 1000 new ones.
  Rls rls(3, 0.99, 10.0);
  std::mt19937_64 rng(4);
  std::normal_distribution<double> n(0, 1);
  auto feed = [&](double wu, int count) {
    for (int i = 0; i < count; ++i) {
      Eigen::VectorXd x(3);
      x << 1.0, 0.5, n(rng);
      rls.update(x, 2.0 + wu * x[2]);
    }
  };
  feed(1.0, 20000);
  feed(3.0, 1000);
  Eigen::VectorXd probe(3);
  probe << 1.0, 0.5, 1.0;
  EXPECT_NEAR(rls.predict(probe), 5.0, 1e-3);
  EXPECT_EQ(rls.resets(), 0);
}

TEST(Sgd, ConvergesOnTheSameData) {
  Eigen::VectorXd w(5);
  w << 0.5, -1.0, 2.0, 0.0, 3.25;
  Sgd sgd(5, 0.5);
  std::mt19937_64 rng(1);
  for (int i = 0; i < 3000; ++i) {
    const Eigen::VectorXd x = random_x(rng, 5);
    sgd.update(x, w.dot(x));
  }
  EXPECT_LT((sgd.weights() - w).cwiseAbs().maxCoeff(), 1e-4);
}

TEST(CoLocation, FeaturesOfAHandBuiltOverlap) {
  // Lanes 0 and 1 share device 0; lane 2 is on device 1 and never counts.
  CoLocation c({0, 0, 1}, {0.5, 0.5, 1.0}, /*alpha=*/0.5);
  c.on_start(1, 0, from_ms(6), /*l2=*/0.4, /*dram=*/0.2);
  c.on_start(2, 0, from_ms(100), 0.9, 0.9);
  // Lane 0 at 2 ms, solo 8 ms, l2 0.5, dram 0.1: lane 1 overlaps (6 - 2) / 8 = half of it.
  const auto f = c.features(0, from_ms(2), from_ms(8), 0.5, 0.1, /*coarse=*/false);
  const CoLocation::Features want = {1, 8, 0.5, 4, 2, 1.6, 0.4, 0.8, 0, 0, 0, 0};
  for (int i = 0; i < CoLocation::kFeatures; ++i) EXPECT_NEAR(f[i], want[i], 1e-12) << i;
  const auto g = c.features(0, from_ms(2), from_ms(8), 0.5, 0.1, /*coarse=*/true);
  const CoLocation::Features coarse = {1, 8, 0.5, 8, 4, 3.2, 0.8, 1.6, 0, 0, 0, 0};
  for (int i = 0; i < CoLocation::kFeatures; ++i) EXPECT_NEAR(g[i], coarse[i], 1e-12) << i;
  // Lane 0 runs 2-10 ms, lane 1 ends at 6 ms: over lane 0's run the co-runner used L2 0.4 for
  // half the time (0.2 on average), DRAM 0.1; the EWMA (alpha 0.5) moves halfway from 0.
  c.on_start(0, from_ms(2), from_ms(10), 0.5, 0.1);
  c.on_finish(1, from_ms(6));
  c.on_finish(0, from_ms(10));
  const auto [l2, dram] = c.ewma(0);
  EXPECT_NEAR(l2, 0.1, 1e-12);
  EXPECT_NEAR(dram, 0.05, 1e-12);
  // Now lane 0's features carry the EWMA terms (nothing runs beside it any more).
  const auto h = c.features(0, from_ms(20), from_ms(8), 0.5, 0.1, false);
  EXPECT_NEAR(h[3], 0.0, 1e-12);
  EXPECT_NEAR(h[8], 0.8, 1e-12);
  EXPECT_NEAR(h[9], 0.4, 1e-12);
}

TEST(CoLocation, QueuedCoRunnersCoverTheRestOfTheRun) {
  // Lanes 0, 1 and 2 share a device; lanes 1 and 2 have queued work, lane 2 has never run.
  std::vector<char> queued = {0, 1, 1};
  CoLocation c({0, 0, 0}, {0.4, 0.3, 0.3}, 0.5, [&](int lane) { return queued[lane] != 0; });
  c.on_start(1, 0, from_ms(6), /*l2=*/0.4, /*dram=*/0.2);
  // Lane 0 at 2 ms, solo 8 ms: lane 1's batch covers half the run, its next one the other half.
  auto f = c.features(0, from_ms(2), from_ms(8), 0.5, 0.1, false);
  EXPECT_NEAR(f[5], 8 * 0.5 * 0.4, 1e-12);
  EXPECT_NEAR(f[10], 8 * 0.5 * 0.4, 1e-12);
  EXPECT_NEAR(f[11], 8 * 0.5 * 0.2, 1e-12);
  // Idle with a backlog: its latest (finished) batch covers the whole run.
  c.on_finish(1, from_ms(6));
  f = c.features(0, from_ms(7), from_ms(8), 0.5, 0.1, false);
  EXPECT_NEAR(f[3], 0.0, 1e-12);
  EXPECT_NEAR(f[10], 8 * 0.4, 1e-12);
  EXPECT_NEAR(f[11], 8 * 0.2, 1e-12);
  // No backlog: nothing is expected to start beside it.
  queued[1] = 0;
  f = c.features(0, from_ms(7), from_ms(8), 0.5, 0.1, false);
  EXPECT_NEAR(f[10], 0.0, 1e-12);
  // The coarse (static) features never look ahead.
  queued[1] = 1;
  f = c.features(0, from_ms(7), from_ms(8), 0.5, 0.1, true);
  EXPECT_NEAR(f[10], 0.0, 1e-12);
}
