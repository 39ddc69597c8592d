// Factories of the built-in policies (make_policy in batch_policy.cpp picks one by name).
#pragma once

#include "gpulanes/sched/batch_policy.h"

namespace gpulanes {

std::unique_ptr<BatchPolicy> make_deadline_policy(const PolicyConfig& config);
std::unique_ptr<BatchPolicy> make_fifo_policy(const PolicyConfig& config);
std::unique_ptr<BatchPolicy> make_max_delay_policy(const PolicyConfig& config);
std::unique_ptr<BatchPolicy> make_aimd_policy(const PolicyConfig& config);

// Of the models `lane` serves, the one whose head request arrived first, or -1 when their
// queues are empty.
int oldest_head(const SchedulingState& state, int lane);

}  // namespace gpulanes
