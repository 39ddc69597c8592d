// The foundation policy: serve the model whose most urgent request has the earliest deadline,
// and take as many of its requests as max_batch_size allows, without waiting. Expired requests
// never reach it: the event loop drops them first. Deadline-aware batch sizing replaces this in
// the temporal-scheduling work.
#include "gpulanes/core/error.h"
#include "gpulanes/sched/batch_policy.h"

namespace gpulanes {
namespace {

class EdfGreedyPolicy final : public BatchPolicy {
 public:
  std::string name() const override { return "edf_greedy"; }

  Batch next_batch(const Lane&, SchedulingState& state, TimeNs, TimeNs*) override {
    int best = -1;
    TimeNs best_deadline = kNever;
    for (int m = 0; m < static_cast<int>(state.queues.size()); ++m) {
      auto d = state.queues[m]->earliest_deadline();
      if (d && (best < 0 || *d < best_deadline)) {
        best = m;
        best_deadline = *d;
      }
    }
    Batch batch;
    if (best < 0) return batch;
    batch.model = best;
    batch.requests = state.queues[best]->pop_up_to(state.models.at(best).spec.max_batch_size);
    return batch;
  }
};

}  // namespace

std::unique_ptr<BatchPolicy> make_policy(const std::string& name) {
  if (name == "deadline" || name == "edf_greedy") return std::make_unique<EdfGreedyPolicy>();
  throw Error(ErrorCode::kInvalidInput, "unknown policy '" + name + "' (available: deadline)");
}

}  // namespace gpulanes
