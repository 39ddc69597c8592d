#include "gpulanes/predict/regressors.h"

#include <algorithm>
#include <cmath>

#include "gpulanes/core/error.h"

namespace gpulanes {

Rls::Rls(int dim, double forgetting, double delta, double max_eigenvalue)
    : w_(Eigen::VectorXd::Zero(dim)),
      lambda_(forgetting),
      delta_(delta),
      max_eigenvalue_(max_eigenvalue > 0 ? max_eigenvalue : delta) {
  if (dim < 1) throw Error(ErrorCode::kInvalidInput, "RLS needs dim >= 1");
  if (!(forgetting > 0 && forgetting <= 1)) {
    throw Error(ErrorCode::kInvalidInput, "RLS forgetting must be in (0, 1]");
  }
  if (!(delta > 0)) throw Error(ErrorCode::kInvalidInput, "RLS delta must be > 0");
  P_ = Eigen::MatrixXd::Identity(dim, dim) * delta_;
}

void Rls::reset_covariance() {
  P_ = Eigen::MatrixXd::Identity(w_.size(), w_.size()) * delta_;
  ++resets_;
}

void Rls::update(const Eigen::VectorXd& x, double y) {
  if (x.size() != w_.size()) throw Error(ErrorCode::kInvalidInput, "RLS: feature size differs");
  if (!x.allFinite() || !std::isfinite(y)) return;  // a bad sample must not poison the model
  const Eigen::VectorXd Px = P_ * x;
  const double denom = lambda_ + x.dot(Px);
  if (!(denom > 0) || !std::isfinite(denom)) {
    reset_covariance();
    return;
  }
  const Eigen::VectorXd k = Px / denom;
  const Eigen::VectorXd w = w_ + k * (y - w_.dot(x));
  Eigen::MatrixXd P = (P_ - k * Px.transpose()) / lambda_;
  P = 0.5 * (P + P.transpose());
  if (!w.allFinite()) {
    reset_covariance();
    return;
  }
  w_ = w;
  if (!P.allFinite() || (P.diagonal().array() <= 0).any()) {
    reset_covariance();
    return;
  }
  // All eigenvalues are below the trace (P is positive semi-definite): decompose only when the
  // trace says one may exceed the cap.
  if (P.trace() > max_eigenvalue_) {
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(P);
    const Eigen::VectorXd clipped = eig.eigenvalues().cwiseMax(0.0).cwiseMin(max_eigenvalue_);
    P = eig.eigenvectors() * clipped.asDiagonal() * eig.eigenvectors().transpose();
  }
  P_ = P;
}

Sgd::Sgd(int dim, double lr, double eps) : w_(Eigen::VectorXd::Zero(dim)), lr_(lr), eps_(eps) {
  if (dim < 1) throw Error(ErrorCode::kInvalidInput, "SGD needs dim >= 1");
  if (!(lr > 0 && lr <= 2)) throw Error(ErrorCode::kInvalidInput, "SGD lr must be in (0, 2]");
}

void Sgd::update(const Eigen::VectorXd& x, double y) {
  if (x.size() != w_.size()) throw Error(ErrorCode::kInvalidInput, "SGD: feature size differs");
  if (!x.allFinite() || !std::isfinite(y)) return;
  w_ += lr_ * (y - w_.dot(x)) / (eps_ + x.squaredNorm()) * x;
}

Eigen::VectorXd least_squares(const Eigen::MatrixXd& X, const Eigen::VectorXd& y) {
  if (X.rows() != y.size()) throw Error(ErrorCode::kInvalidInput, "least_squares: rows differ");
  // SVD with numpy's cut-off (singular values below eps * max(M, N) * the largest are dropped),
  // so collinear features (a constant SM share beside the intercept) get the minimum-norm split.
  Eigen::BDCSVD<Eigen::MatrixXd> svd(X, Eigen::ComputeThinU | Eigen::ComputeThinV);
  svd.setThreshold(Eigen::NumTraits<double>::epsilon() * std::max(X.rows(), X.cols()));
  return svd.solve(y);
}

}  // namespace gpulanes
