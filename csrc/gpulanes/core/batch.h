// A batch: requests of one model that a policy chose to run together on one lane. Made by the
// policy on the event loop, moved to the lane that runs it.
#pragma once

#include <cstdint>
#include <vector>

#include "gpulanes/core/request.h"
#include "gpulanes/core/time.h"

namespace gpulanes {

struct Batch {
  std::uint64_t id = 0;               // unique per runtime
  int model = -1;                     // every request in a batch is for this model
  std::vector<RequestPtr> requests;   // in queue order
  DurationNs predicted_ns = 0;        // the policy's latency prediction (0: none)
};

}  // namespace gpulanes
