// What the runtime knows about a registered model besides its weights: name, per-sample input
// signature (from example_inputs, batch dimension removed), SLO and batching/queue bounds.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "gpulanes/core/time.h"

namespace at { class Tensor; }

namespace gpulanes {

// One input of one request. A string input (forward() takes List[str]) has dtype kStringDtype
// (string_tensor.h) and shape {} (one string per request; a batch's strings make the list) or,
// for a model without a batch dimension, {-1} (a request is the whole list, of any length).
struct TensorSpec {
  std::vector<std::int64_t> shape;  // per-sample shape (no batch dimension)
  c10::ScalarType dtype = c10::ScalarType::Float;

  bool strings() const;
};

struct ModelSpec {
  std::string name;                 // unique key used by submit
  std::vector<TensorSpec> inputs;   // positional forward() arguments, one sample each
  DurationNs slo = from_ms(100);    // default relative deadline
  int max_batch_size = 32;          // largest batch a lane may run
  std::size_t max_queue = 10000;    // bound of the model's EDF queue
  bool batched = true;              // false: the model has no batch dimension (Triton's
                                    // max_batch_size 0); it runs one request at a time
                                    // (max_batch_size 1) on its inputs as they are
};

// Throws Error(kInvalidInput) naming the model, the argument and what differs.
void validate_inputs(const ModelSpec& spec, const std::vector<at::Tensor>& inputs);

// Throws Error(kInvalidInput) when the spec itself is unusable (empty name, no inputs when
// `needs_inputs`, ...).
void validate_spec(const ModelSpec& spec, bool needs_inputs = true);

std::string describe(const TensorSpec& spec);

}  // namespace gpulanes
