#include "gpulanes/predict/latency_predictor.h"

#include <algorithm>

#include "gpulanes/core/check.h"
#include "gpulanes/core/error.h"

namespace gpulanes {

void validate(const PredictorConfig& c) {
  static const char* kinds[] = {"none", "static", "ewma", "sgd", "rls"};
  if (std::find(std::begin(kinds), std::end(kinds), c.kind) == std::end(kinds)) {
    throw Error(ErrorCode::kInvalidInput, "unknown predictor '" + c.kind +
                                              "' (available: none, static, ewma, sgd, rls)");
  }
  check_real("predictor option alpha", c.alpha, 0, 1, /*open_lo=*/true);
  check_real("predictor option forgetting", c.forgetting, 0, 1, /*open_lo=*/true);
  check_real("predictor option delta", c.delta, 0, 1e12, /*open_lo=*/true);
  check_real("predictor option lr", c.lr, 0, 10, /*open_lo=*/true);
  check_int("predictor option warmup_batches", c.warmup_batches, 0, 1 << 30);
  if (!c.weights.empty()) {
    constexpr int n = CoLocation::kFeatures;
    if (static_cast<int>(c.weights.size()) != n) {
      throw Error(ErrorCode::kInvalidInput, "predictor option weights needs " + std::to_string(n) +
                                                " values, got " + std::to_string(c.weights.size()));
    }
    for (double w : c.weights) check_real("predictor option weights entries", w, -1e9, 1e9);
  }
}

LatencyPredictor::LatencyPredictor(PredictorConfig config, const ProfileBook& book,
                                   std::vector<int> lane_device, std::vector<double> lane_share,
                                   CoLocation::Backlog backlog)
    : cfg_(std::move(config)),
      book_(book),
      coloc_(std::move(lane_device), std::move(lane_share), cfg_.alpha, std::move(backlog)) {
  validate(cfg_);
  constexpr int n = CoLocation::kFeatures;
  w_ = Eigen::VectorXd::Zero(n);
  w_[1] = 1.0;  // latency = solo latency until trained
  if (!cfg_.weights.empty()) w_ = Eigen::Map<const Eigen::VectorXd>(cfg_.weights.data(), n);
  if (cfg_.kind == "rls") {
    rls_.emplace(n, cfg_.forgetting, cfg_.delta);
    rls_->set_weights(w_);
  } else if (cfg_.kind == "sgd") {
    sgd_.emplace(n, cfg_.lr);
    sgd_->set_weights(w_);
  }
}

Eigen::VectorXd LatencyPredictor::vec(const CoLocation::Features& f) {
  return Eigen::Map<const Eigen::VectorXd>(f.data(), CoLocation::kFeatures);
}

double LatencyPredictor::predict_ms(const CoLocation::Features& fine,
                                    const CoLocation::Features& coarse) const {
  if (cfg_.kind == "static") return w_.dot(vec(coarse));
  if (learned_ >= cfg_.warmup_batches) {
    if (rls_) return rls_->predict(vec(fine));
    if (sgd_) return sgd_->predict(vec(fine));
  }
  return w_.dot(vec(fine));
}

DurationNs LatencyPredictor::predict(int model, int lane, int b, TimeNs now) const {
  const DurationNs solo = book_.predict(model, lane, b);
  if (!active() || solo <= 0) return solo;
  const double l2 = book_.l2(model, lane, b), dram = book_.dram(model, lane, b);
  const bool coarse = cfg_.kind == "static";
  const auto f = coloc_.features(lane, now, solo, l2, dram, coarse);
  double ms;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ms = predict_ms(f, f);
  }
  const double solo_ms = solo / 1e6;
  return static_cast<DurationNs>(std::clamp(ms, 0.5 * solo_ms, 20.0 * solo_ms) * 1e6);
}

void LatencyPredictor::on_start(std::uint64_t id, int model, int lane, int b, TimeNs now,
                                DurationNs predicted) {
  const DurationNs solo = book_.predict(model, lane, b);
  const double l2 = book_.l2(model, lane, b), dram = book_.dram(model, lane, b);
  PredictionRecord r;
  r.model = model;
  r.lane = lane;
  r.size = b;
  r.start = now;
  r.solo_ns = solo;
  r.predicted_ns = predicted > 0 ? predicted : solo;
  // Features as they are at the start, before this batch joins the co-location state.
  r.fine = coloc_.features(lane, now, solo, l2, dram, /*coarse=*/false);
  r.coarse = coloc_.features(lane, now, solo, l2, dram, /*coarse=*/true);
  coloc_.on_start(lane, now, now + r.predicted_ns, l2, dram);
  std::lock_guard<std::mutex> lock(mu_);
  pending_[id] = std::move(r);
}

void LatencyPredictor::on_finish(std::uint64_t id, int lane, TimeNs end) {
  coloc_.on_finish(lane, end);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = pending_.find(id);
  if (it == pending_.end()) return;
  PredictionRecord r = std::move(it->second);
  pending_.erase(it);
  r.end = end;
  const double actual_ms = (end - r.start) / 1e6;
  if (r.solo_ns > 0 && (rls_ || sgd_)) {
    if (rls_) rls_->update(vec(r.fine), actual_ms);
    if (sgd_) sgd_->update(vec(r.fine), actual_ms);
    ++learned_;
  }
  if (cfg_.record) records_.push_back(std::move(r));
}

std::vector<double> LatencyPredictor::weights() const {
  std::lock_guard<std::mutex> lock(mu_);
  const Eigen::VectorXd& w = rls_ ? rls_->weights() : sgd_ ? sgd_->weights() : w_;
  return std::vector<double>(w.data(), w.data() + w.size());
}

std::vector<PredictionRecord> LatencyPredictor::records() const {
  std::lock_guard<std::mutex> lock(mu_);
  return records_;
}

}  // namespace gpulanes
