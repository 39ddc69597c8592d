// Latency profiles by (model, lane): each model's own profile, replaced on lanes where it runs at
// a different speed (a lane with another SM share has a profile of its own). The scheduler asks
// it on every decision, so predictions for batch sizes 1..max are precomputed into dense tables.
// Built once before serving, then read-only: any thread may read it without a lock.
#pragma once

#include <vector>

#include "gpulanes/core/time.h"
#include "gpulanes/predict/latency_profile.h"

namespace gpulanes {

class ProfileBook {
 public:
  // `defaults[m]`: model m's profile. `lane_profiles[l][m]`: its profile on lane l, or null for
  // the default. `serves[l][m]`: whether lane l runs model m. `max_batch[m]`: largest batch.
  void build(const std::vector<LatencyProfile>& defaults,
             const std::vector<std::vector<const LatencyProfile*>>& lane_profiles,
             const std::vector<std::vector<char>>& serves, const std::vector<int>& max_batch);

  int models() const { return static_cast<int>(tables_.empty() ? 0 : tables_[0].size()); }
  // The profile `model` is scheduled with on `lane`.
  const LatencyProfile& profile(int model, int lane) const { return *tables_[lane][model].profile; }
  // Predicted latency of a batch of `b` of `model` on `lane`; 0 when its profile is empty.
  DurationNs predict(int model, int lane, int b) const;
  // Resource use of a batch of `b` of `model` on `lane` (see LatencyPoint).
  double l2(int model, int lane, int b) const { return tables_[lane][model].profile->l2(b); }
  double dram(int model, int lane, int b) const { return tables_[lane][model].profile->dram(b); }
  // The smallest predicted latency of a batch of `b` over the lanes that serve `model`; kNever
  // when none does.
  DurationNs fastest(int model, int b) const;
  bool serves(int lane, int model) const { return serves_[lane][model] != 0; }
  // Whether some lane serves `model`.
  bool served(int model) const { return fastest_[model].front() != kNever; }
  // Lanes that serve `model`, and models that `lane` serves, in index order.
  const std::vector<int>& lanes_of(int model) const { return lanes_of_[model]; }
  const std::vector<int>& models_of(int lane) const { return models_of_[lane]; }

 private:
  struct Table {
    const LatencyProfile* profile = nullptr;  // for sizes beyond the table
    std::vector<DurationNs> by_size;          // [b - 1] for b in 1..max_batch + 1
  };
  std::vector<LatencyProfile> defaults_;          // copies: the book outlives nothing it points to
  std::vector<LatencyProfile> overrides_;         // lane-specific profiles, owned
  std::vector<std::vector<Table>> tables_;        // [lane][model]
  std::vector<std::vector<DurationNs>> fastest_;  // [model][b - 1]
  std::vector<std::vector<char>> serves_;         // [lane][model]
  std::vector<std::vector<int>> lanes_of_;        // [model] -> lanes
  std::vector<std::vector<int>> models_of_;       // [lane] -> models
};

}  // namespace gpulanes
