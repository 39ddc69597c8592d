#include "gpulanes/predict/profile_book.h"

#include <algorithm>

namespace gpulanes {

void ProfileBook::build(const std::vector<LatencyProfile>& defaults,
                        const std::vector<std::vector<const LatencyProfile*>>& lane_profiles,
                        const std::vector<std::vector<char>>& serves,
                        const std::vector<int>& max_batch) {
  const std::size_t models = defaults.size(), lanes = serves.size();
  defaults_ = defaults;
  overrides_.clear();
  std::size_t n_overrides = 0;
  for (const auto& row : lane_profiles) {
    for (const auto* p : row) n_overrides += p != nullptr;
  }
  overrides_.reserve(n_overrides);  // no reallocation: tables point into it
  serves_ = serves;
  tables_.assign(lanes, std::vector<Table>(models));
  fastest_.assign(models, {});
  lanes_of_.assign(models, {});
  models_of_.assign(lanes, {});
  for (std::size_t m = 0; m < models; ++m) {
    const int sizes = std::max(1, max_batch[m]) + 1;  // one more: "a batch one larger" is asked
    fastest_[m].assign(sizes, kNever);
    for (std::size_t l = 0; l < lanes; ++l) {
      Table& t = tables_[l][m];
      const LatencyProfile* own = l < lane_profiles.size() && m < lane_profiles[l].size()
                                      ? lane_profiles[l][m] : nullptr;
      if (own) {
        overrides_.push_back(*own);
        t.profile = &overrides_.back();
      } else {
        t.profile = &defaults_[m];
      }
      t.by_size.resize(sizes);
      for (int b = 1; b <= sizes; ++b) t.by_size[b - 1] = t.profile->predict(b);
      if (!serves_[l][m]) continue;
      lanes_of_[m].push_back(static_cast<int>(l));
      models_of_[l].push_back(static_cast<int>(m));
      for (int b = 1; b <= sizes; ++b) {
        fastest_[m][b - 1] = std::min(fastest_[m][b - 1], t.by_size[b - 1]);
      }
    }
  }
}

DurationNs ProfileBook::predict(int model, int lane, int b) const {
  const Table& t = tables_[lane][model];
  if (b >= 1 && b <= static_cast<int>(t.by_size.size())) return t.by_size[b - 1];
  return t.profile->predict(b);
}

DurationNs ProfileBook::fastest(int model, int b) const {
  const auto& f = fastest_[model];
  if (b >= 1 && b <= static_cast<int>(f.size())) return f[b - 1];
  DurationNs best = kNever;
  for (int l : lanes_of_[model]) best = std::min(best, tables_[l][model].profile->predict(b));
  return best;
}

}  // namespace gpulanes
