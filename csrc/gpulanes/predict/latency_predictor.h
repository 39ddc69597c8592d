// Batch latency prediction under interference: the profile's solo latency corrected by a linear
// model over co-location features (colocation.h). Variants, as in "ML Inference Scheduling with
// Predictable Latency" (shared/REFERENCES.md):
//   none    no model: the policy predicts from the profile alone (with its own slow-down factor)
//   static  offline weights over coarse features (a co-runner counts fully if running at start)
//   ewma    offline weights over fine-grained features with EWMA co-location signals
//   sgd     fine-grained + EWMA features, learned online by normalized SGD
//   rls     fine-grained + EWMA features, learned online by recursive least squares
// Offline weights come from a profiling phase (least_squares over recorded batches); without
// them a model starts as "latency = solo latency". Online variants learn from every finished
// batch's measured latency. Thread-safe: the event loop predicts and reports starts, lane
// workers report finishes.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "gpulanes/predict/colocation.h"
#include "gpulanes/predict/profile_book.h"
#include "gpulanes/predict/regressors.h"

namespace gpulanes {

struct PredictorConfig {
  std::string kind = "none";    // none, static, ewma, sgd, rls
  double alpha = 0.3;           // EWMA weight of the newest batch's co-location
  double forgetting = 0.98;     // rls: memory of about 1 / (1 - 0.98) = 50 batches
  double delta = 10.0;          // rls: initial covariance, delta * I (features in ms)
  double lr = 0.05;             // sgd (normalized step)
  std::vector<double> weights;  // offline or initial weights (CoLocation::kFeatures); empty:
                                // latency = solo latency
  int warmup_batches = 20;      // online kinds predict with `weights` until they have learned
                                // from this many batches (one noisy batch must not steer them)
  bool record = false;          // keep every batch's features and outcome (records())
};

// Throws Error(kInvalidInput) for an unknown kind or the first option outside its range (named
// as Runtime(predictor_options=...) names them).
void validate(const PredictorConfig& config);

// One finished batch, for experiments and offline fits.
struct PredictionRecord {
  int model = -1, lane = -1, size = 0;
  TimeNs start = 0, end = 0;
  DurationNs solo_ns = 0;       // the profile's solo latency on its lane
  DurationNs predicted_ns = 0;  // what the scheduler predicted when it chose the batch
  CoLocation::Features fine{}, coarse{};
};

class LatencyPredictor {
 public:
  // Throws Error(kInvalidInput) for an unknown kind or weights of the wrong size.
  // `book` must outlive the predictor (the runtime owns both). `backlog` says whether a lane has
  // queued work (CoLocation::Backlog).
  LatencyPredictor(PredictorConfig config, const ProfileBook& book, std::vector<int> lane_device,
                   std::vector<double> lane_share, CoLocation::Backlog backlog = {});

  const std::string& kind() const { return cfg_.kind; }
  bool active() const { return cfg_.kind != "none"; }
  // Predicted latency of a batch of `b` of `model` on `lane` starting at `now`, given the
  // book's solo profile. Clamped to [0.5, 20] x solo: an early, barely trained model must not
  // make the scheduler believe in free or endless batches.
  DurationNs predict(int model, int lane, int b, TimeNs now) const;
  // Batch `id` of `b` requests of `model` starts on `lane` now, predicted to take `predicted`.
  void on_start(std::uint64_t id, int model, int lane, int b, TimeNs now, DurationNs predicted);
  // Batch `id` ended at `end`: co-location bookkeeping, then learning (online kinds).
  void on_finish(std::uint64_t id, int lane, TimeNs end);

  std::vector<double> weights() const;
  std::vector<PredictionRecord> records() const;

 private:
  // The regression input for this kind: coarse features for static, fine ones otherwise.
  static Eigen::VectorXd vec(const CoLocation::Features& f);
  double predict_ms(const CoLocation::Features& fine, const CoLocation::Features& coarse) const;

  const PredictorConfig cfg_;
  const ProfileBook& book_;              // solo latencies and resource use
  CoLocation coloc_;                     // thread-safe on its own
  mutable std::mutex mu_;                // guards the fields below
  Eigen::VectorXd w_;                    // static / ewma weights
  std::optional<Rls> rls_;
  std::optional<Sgd> sgd_;
  int learned_ = 0;                      // batches the online model has learned from
  std::unordered_map<std::uint64_t, PredictionRecord> pending_;  // running batches by id
  std::vector<PredictionRecord> records_;               // when cfg_.record
};

}  // namespace gpulanes
