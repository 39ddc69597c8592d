#include "gpulanes/plan/replanner.h"

#include <stdexcept>

#include <algorithm>
#include <cmath>

#include "gpulanes/core/check.h"
#include "gpulanes/core/error.h"

namespace gpulanes {

void validate(const ReplanOptions& o) {
  constexpr double kDay = 86400;
  check_real("replan every_s", o.every_s, 0, kDay);
  check_real("replan check_s", o.check_s, 0, kDay, /*open_lo=*/true);
  check_real("replan drift", o.drift, 0, 1e6);
  check_real("replan min_rate", o.min_rate, 0, 1e9);
  check_real("replan alpha", o.alpha, 0, 1, /*open_lo=*/true);
  check_real("replan admit_fraction", o.admit_fraction, 0, 1, /*open_lo=*/true);
  for (double r : o.initial_rates) {
    if (r >= 0) check_real("replan initial_rates entries", r, 0, 1e9);
  }
  validate(o.planner);
}

Replanner::Replanner(ReplanOptions options, int n_models, TimeNs start, int capacity)
    : opt_(std::move(options)),
      origin_(start),
      every_(static_cast<DurationNs>(opt_.every_s * 1e9)),
      check_(opt_.drift > 0 ? static_cast<DurationNs>(opt_.check_s * 1e9) : 0),
      window_(new std::atomic<double>[static_cast<std::size_t>(std::max(capacity, n_models))]),
      capacity_(std::max(capacity, n_models)),
      n_models_(n_models),
      window_start_(start),
      rate_(n_models, -1.0) {
  validate(opt_);
  for (int m = 0; m < capacity_; ++m) window_[m].store(0, std::memory_order_relaxed);
  for (int m = 0; m < n_models && m < static_cast<int>(opt_.initial_rates.size()); ++m) {
    rate_[m] = opt_.initial_rates[m];
  }
  next_replan_ = every_ > 0 ? start + every_ : kNever;
  next_check_ = every_ > 0 && check_ > 0 ? start + check_ : kNever;
}

void Replanner::add_model() {
  if (n_models_ >= capacity_) throw std::length_error("Replanner: no room for another model");
  ++n_models_;
  rate_.push_back(-1.0);
}

void Replanner::reset_model(int model) {
  window_[model].store(0.0, std::memory_order_relaxed);
  rate_.at(static_cast<std::size_t>(model)) = -1.0;
}

bool Replanner::due(TimeNs now, ReplanEvent* event) {
  if (every_ <= 0) return false;
  const double span = std::max(1e-9, (now - window_start_) / 1e9);
  bool drifted = false;
  if (now >= next_check_) {
    // Early re-plan when a planned model's rate since the last plan moved by more than `drift`
    // (relative), on at least 10 arrivals of evidence.
    for (int m = 0; m < n_models_ && rate_[m] >= 0; ++m) {
      const double seen = window_[m].load(std::memory_order_relaxed);
      const double planned = std::max(rate_[m], opt_.min_rate);
      drifted = drifted || (seen >= 10 && std::abs(seen / span - planned) > opt_.drift * planned);
    }
    next_check_ = now + check_;
  }
  const bool timer = now >= next_replan_;
  if (!timer && !drifted) return false;
  for (int m = 0; m < n_models_; ++m) {
    const double r = window_[m].exchange(0, std::memory_order_relaxed) / span;
    rate_[m] = rate_[m] < 0 ? r : opt_.alpha * r + (1 - opt_.alpha) * rate_[m];
  }
  window_start_ = now;
  next_replan_ = now + every_;
  if (event) {
    event->t_s = (now - origin_) / 1e9;
    event->drift = drifted && !timer;
    event->rates = planning_rates();
  }
  return true;
}

std::vector<double> Replanner::planning_rates() const {
  std::vector<double> out(n_models_);
  for (int m = 0; m < n_models_; ++m) out[m] = std::max(rate_[m], opt_.min_rate);
  return out;
}

std::vector<double> admission_limits(const Plan& plan, const std::vector<double>& rates,
                                     double fraction) {
  std::vector<double> limit(rates.size(), -1.0);
  for (std::size_t m = 0; m < rates.size() && m < plan.unplaced_rate.size(); ++m) {
    if (plan.unplaced_rate[m] <= 0) continue;
    // A model being shed arrives through the token bucket, whose output has no bursts beyond
    // the bucket: its lanes may run it at the rate they were sized for (bursts included).
    const double placed = m < plan.planned_rate.size() ? plan.planned_rate[m]
                                                        : rates[m] - plan.unplaced_rate[m];
    limit[m] = fraction * std::max(0.0, placed);
  }
  return limit;
}

}  // namespace gpulanes
