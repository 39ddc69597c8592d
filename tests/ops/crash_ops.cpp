// Custom operators for the process-lane tests: what a buggy extension does to the process that
// runs it. Loaded into a worker with Runtime(isolation="process",
// worker_options={"libraries": [...]}); never run in the test process itself.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdlib>

namespace {

// Returns x, or aborts the whole process when any element is negative (a failed internal
// assertion in a custom op, as C++ code ends it).
at::Tensor abort_if_negative(const at::Tensor& x) {
  if ((x < 0).any().item<bool>()) std::abort();
  return x;
}

}  // namespace

TORCH_LIBRARY(gpulanes_test, m) {
  m.def("abort_if_negative(Tensor x) -> Tensor", &abort_if_negative);
}
