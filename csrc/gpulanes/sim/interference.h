// Ground truth of the simulator: how much slower a batch runs while other batches run on other
// lanes of the same GPU. SM partitions split compute, but L2 and DRAM bandwidth stay shared, so a
// batch slows down with what its neighbours do. The simulator re-evaluates the factor whenever
// the set of batches on a GPU changes and applies it to that stretch of time only.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "gpulanes/core/time.h"

namespace gpulanes {

// A batch running on a GPU, as interference models see it.
struct CoRunner {
  int model = -1;
  int batch_size = 0;
  double share = 1.0;  // SM share of its lane
  double l2 = 0;       // fraction of L2 bandwidth it uses alone on its lane (0..1)
  double dram = 0;     // fraction of DRAM bandwidth it uses alone on its lane (0..1)
};

class InterferenceModel {
 public:
  virtual ~InterferenceModel() = default;
  virtual std::string name() const = 0;
  // Slow-down factor (>= 1) of `self` while `others` run beside it on the same GPU; `elapsed` is
  // the simulated time since the run started (for models that drift).
  virtual double factor(const CoRunner& self, const std::vector<CoRunner>& others,
                        DurationNs elapsed) const = 0;
};

// No interference: every factor is 1.
std::shared_ptr<InterferenceModel> make_no_interference();

// gpu-let (Choi et al., ATC 2022): a = c0 L2_self + c1 L2_other + c2 DRAM_self + c3 DRAM_other + c4
// for each co-runner, the largest a over co-runners, at least 1. Their RTX 2080 Ti fit:
// c = {0.113, 0.716, 0.355, 0.088, 0.895}.
std::shared_ptr<InterferenceModel> make_linear_interference(std::vector<double> c);

// A nonlinear ground truth that a linear predictor cannot fit exactly:
// 1 + alpha * sqrt(L2_self * sum L2_other) + beta * max(0, DRAM_self + sum DRAM_other - capacity)^2
// (the L2 term grows with the product of the working sets; DRAM costs nothing until the summed
// demand passes the capacity, then quadratically).
std::shared_ptr<InterferenceModel> make_nonlinear_interference(double alpha = 0.6, double beta = 2.0,
                                                               double capacity = 0.8);

// `base`'s excess slow-down (factor - 1) multiplied by 1 until `start`, then changing linearly to
// `scale` over `ramp` (0: a step), then `scale`: interference that drifts while serving.
std::shared_ptr<InterferenceModel> make_drifting_interference(std::shared_ptr<InterferenceModel> base,
                                                              DurationNs start, DurationNs ramp,
                                                              double scale);

}  // namespace gpulanes
