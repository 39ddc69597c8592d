#include "gpulanes/sim/interference.h"

#include <algorithm>
#include <cmath>

#include "gpulanes/core/error.h"

namespace gpulanes {
namespace {

class NoInterference final : public InterferenceModel {
 public:
  std::string name() const override { return "none"; }
  double factor(const CoRunner&, const std::vector<CoRunner>&, DurationNs) const override {
    return 1.0;
  }
};

class LinearInterference final : public InterferenceModel {
 public:
  explicit LinearInterference(std::vector<double> c) : c_(std::move(c)) {
    if (c_.size() != 5) throw Error(ErrorCode::kInvalidInput, "linear interference takes 5 coefficients");
  }
  std::string name() const override { return "linear"; }
  double factor(const CoRunner& self, const std::vector<CoRunner>& others,
                DurationNs) const override {
    double worst = 1.0;
    for (const CoRunner& o : others) {
      worst = std::max(worst, c_[0] * self.l2 + c_[1] * o.l2 + c_[2] * self.dram +
                                  c_[3] * o.dram + c_[4]);
    }
    return worst;
  }

 private:
  const std::vector<double> c_;  // c0..c4
};

class NonlinearInterference final : public InterferenceModel {
 public:
  NonlinearInterference(double alpha, double beta, double capacity)
      : alpha_(alpha), beta_(beta), capacity_(capacity) {}
  std::string name() const override { return "nonlinear"; }
  double factor(const CoRunner& self, const std::vector<CoRunner>& others,
                DurationNs) const override {
    if (others.empty()) return 1.0;
    double l2 = 0, dram = 0;
    for (const CoRunner& o : others) {
      l2 += o.l2;
      dram += o.dram;
    }
    const double over = std::max(0.0, self.dram + dram - capacity_);
    return 1.0 + alpha_ * std::sqrt(self.l2 * l2) + beta_ * over * over;
  }

 private:
  const double alpha_, beta_, capacity_;
};

class DriftingInterference final : public InterferenceModel {
 public:
  DriftingInterference(std::shared_ptr<InterferenceModel> base, DurationNs start, DurationNs ramp,
                       double scale)
      : base_(std::move(base)), start_(start), ramp_(ramp), scale_(scale) {}
  std::string name() const override { return "drift(" + base_->name() + ")"; }
  double factor(const CoRunner& self, const std::vector<CoRunner>& others,
                DurationNs elapsed) const override {
    const double excess = base_->factor(self, others, elapsed) - 1.0;
    double m = 1.0;
    if (elapsed >= start_ + ramp_) {
      m = scale_;
    } else if (elapsed > start_) {
      m = 1.0 + (scale_ - 1.0) * static_cast<double>(elapsed - start_) / ramp_;
    }
    return std::max(1.0, 1.0 + excess * m);
  }

 private:
  std::shared_ptr<InterferenceModel> base_;
  const DurationNs start_, ramp_;
  const double scale_;
};

}  // namespace

std::shared_ptr<InterferenceModel> make_no_interference() {
  return std::make_shared<NoInterference>();
}
std::shared_ptr<InterferenceModel> make_linear_interference(std::vector<double> c) {
  return std::make_shared<LinearInterference>(std::move(c));
}
std::shared_ptr<InterferenceModel> make_nonlinear_interference(double alpha, double beta,
                                                               double capacity) {
  return std::make_shared<NonlinearInterference>(alpha, beta, capacity);
}
std::shared_ptr<InterferenceModel> make_drifting_interference(std::shared_ptr<InterferenceModel> base,
                                                              DurationNs start, DurationNs ramp,
                                                              double scale) {
  if (!base) throw Error(ErrorCode::kInvalidInput, "drifting interference needs a base model");
  return std::make_shared<DriftingInterference>(std::move(base), start, ramp, scale);
}

}  // namespace gpulanes
