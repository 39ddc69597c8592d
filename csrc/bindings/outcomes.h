// How a request's inputs come in from Python and its outcome goes back: inputs as tensors,
// outputs as Python objects, and PendingSink, which holds an accepted request's Python sink (a
// concurrent.futures.Future or an asyncio adapter) until its outcome resolves it.
#pragma once

#include <pybind11/pybind11.h>
#include <torch/extension.h>

#include <memory>
#include <optional>
#include <vector>

#include "gpulanes/core/request.h"
#include "waiting.h"

namespace gpulanes::bindings {

namespace py = pybind11;

// A model output (tensor, str, tuple, list, None) as the Python object it stands for; a string
// that is not UTF-8 comes back as bytes.
py::object to_python(const c10::IValue& v);
// `seq`'s items as the core's inputs: tensors as they are, and a str, bytes or list/tuple of
// them as a string tensor (string_tensor.h; a str as UTF-8). Error(kInvalidInput) naming
// "`what` i" for an item that is neither.
std::vector<at::Tensor> inputs_from(const py::sequence& seq, const char* what);
// Sets the poll flags of the futures this thread resolved in its current delivery. Call after
// the delivery, so that a polling waiter that sees its flag can take the GIL at once.
void publish_resolved();

// An accepted request's Python sink, attached by submit() right after the core accepted it.
// Both sides run with the GIL held (submit, and the delivery hook), which orders them: another
// thread's delivery waits for the GIL until submit has attached, and a delivery that runs
// inline in try_submit (a round the submitting thread ran) leaves its outcome for attach().
class PendingSink {
 public:
  // A sink still held here was never resolved, which the core rules out; it is leaked rather
  // than released on a thread that may not hold the GIL.
  PendingSink() = default;
  PendingSink(const PendingSink&) = delete;
  PendingSink& operator=(const PendingSink&) = delete;

  void complete(Outcome&& o);
  // `sink` is None when making it failed: the outcome is then dropped.
  void attach(const py::object& sink);

 private:
  void deliver(Outcome&& o);

  bool attached_ = false;                   // submit() is done with it
  PyObject* sink_ = nullptr;                // strong reference until resolved
  std::optional<Outcome> early_;            // an outcome delivered before attach()
  std::shared_ptr<ResolvedFlag> resolved_;  // the Future's poll flag, if it has one
};

}  // namespace gpulanes::bindings
