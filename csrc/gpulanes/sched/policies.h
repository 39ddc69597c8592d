// Factories of the built-in policies (make_policy in batch_policy.cpp picks one by name).
#pragma once

#include "gpulanes/sched/batch_policy.h"

namespace gpulanes {

std::unique_ptr<BatchPolicy> make_deadline_policy(const PolicyConfig& config);
std::unique_ptr<BatchPolicy> make_fifo_policy(const PolicyConfig& config);
std::unique_ptr<BatchPolicy> make_max_delay_policy(const PolicyConfig& config);
std::unique_ptr<BatchPolicy> make_aimd_policy(const PolicyConfig& config);

// Index of the model whose head request arrived first, or -1 when every queue is empty.
int oldest_head(const SchedulingState& state);

}  // namespace gpulanes
