#include "gpulanes/core/request.h"

namespace gpulanes {

bool Request::complete(Outcome&& outcome) {
  bool expected = false;
  if (!done_.compare_exchange_strong(expected, true, std::memory_order_acq_rel)) return false;
  CompletionFn fn = std::move(on_done);
  on_done = nullptr;
  if (fn) fn(std::move(outcome));
  return true;
}

}  // namespace gpulanes
