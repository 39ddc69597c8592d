// Linear regressors over small feature vectors, in double precision with Eigen: recursive least
// squares with a forgetting factor, normalized SGD, and an offline least-squares fit. Not
// thread-safe: the owner (a LatencyPredictor) serializes access.
#pragma once

#include <Eigen/Dense>

namespace gpulanes {

// Recursive least squares, exponentially forgetting old samples (forgetting < 1). Guarded: the
// covariance is kept symmetric and its eigenvalues at most `max_eigenvalue` (default: delta).
// Forgetting grows the covariance as forgetting^-n in every direction the features do not
// excite (a constant column beside the intercept, co-location terms while a lane runs alone);
// capping the whole matrix (its trace) would then shrink the gain in the excited directions
// and stall adaptation, so the cap is per direction. The covariance is reset to delta * I,
// keeping the weights, if it stops being finite or positive on the diagonal.
class Rls {
 public:
  explicit Rls(int dim, double forgetting = 0.99, double delta = 1e3, double max_eigenvalue = 0);

  double predict(const Eigen::VectorXd& x) const { return w_.dot(x); }
  void update(const Eigen::VectorXd& x, double y);
  const Eigen::VectorXd& weights() const { return w_; }
  void set_weights(const Eigen::VectorXd& w) { w_ = w; }
  const Eigen::MatrixXd& covariance() const { return P_; }
  int resets() const { return resets_; }  // covariance resets so far

 private:
  void reset_covariance();
  Eigen::VectorXd w_;
  Eigen::MatrixXd P_;
  const double lambda_, delta_, max_eigenvalue_;
  int resets_ = 0;
};

// Normalized least-mean-squares SGD: w += lr * (y - w.x) * x / (eps + |x|^2). The step is
// scale-free in x, so one learning rate fits features of any magnitude.
class Sgd {
 public:
  explicit Sgd(int dim, double lr = 0.05, double eps = 1e-9);
  double predict(const Eigen::VectorXd& x) const { return w_.dot(x); }
  void update(const Eigen::VectorXd& x, double y);
  const Eigen::VectorXd& weights() const { return w_; }
  void set_weights(const Eigen::VectorXd& w) { w_ = w; }

 private:
  Eigen::VectorXd w_;
  const double lr_, eps_;
};

// Minimum-norm least-squares solution of X w = y (what numpy.linalg.lstsq returns).
Eigen::VectorXd least_squares(const Eigen::MatrixXd& X, const Eigen::VectorXd& y);

}  // namespace gpulanes
