#include "outcomes.h"

#include <string>
#include <utility>

#include "bindings.h"
#include "gpulanes/core/error_text.h"

namespace gpulanes::bindings {
namespace {

// Flags of futures resolved during the current delivery; set only after the GIL is released, so
// a polling waiter that sees its flag can take the GIL at once instead of queueing for it.
thread_local std::vector<std::shared_ptr<ResolvedFlag>> t_resolved_in_delivery;

// Runs with the GIL held (delivery hook). Steals the reference taken at submit.
void resolve(PyObject* sink_ref, Outcome&& outcome) {
  py::object sink = py::reinterpret_steal<py::object>(sink_ref);
  try {
    if (outcome.ok()) {
      sink.attr("set_result")(to_python(outcome.output));
    } else {
      sink.attr("set_exception")(make_error(outcome.code, outcome.message));
    }
  } catch (py::error_already_set& e) {
    e.discard_as_unraisable("gpulanes: resolving a request's future");
  } catch (const std::exception& e) {
    try {
      sink.attr("set_exception")(make_error(ErrorCode::kModelError, error_text(e)));
    } catch (py::error_already_set& e2) {
      e2.discard_as_unraisable("gpulanes: resolving a request's future");
    }
  }
}

}  // namespace

py::object to_python(const c10::IValue& v) {
  if (v.isTensor()) return py::cast(v.toTensor());
  if (v.isTuple()) {
    const auto& elems = v.toTupleRef().elements();
    py::tuple out(elems.size());
    for (std::size_t i = 0; i < elems.size(); ++i) out[i] = to_python(elems[i]);
    return out;
  }
  if (v.isList()) {
    py::list out;
    for (const auto& e : v.toList()) out.append(to_python(e));
    return out;
  }
  if (v.isNone()) return py::none();
  throw Error(ErrorCode::kModelError, "cannot convert model output of type " + v.tagKind());
}

std::vector<at::Tensor> tensors_from(const py::sequence& seq, const char* what) {
  std::vector<at::Tensor> out;
  out.reserve(py::len(seq));
  std::size_t i = 0;
  for (py::handle item : seq) {
    if (!THPVariable_Check(item.ptr())) {
      throw Error(ErrorCode::kInvalidInput, std::string(what) + " " + std::to_string(i) + " is a " +
                                                std::string(py::str(py::type::of(item).attr("__name__"))) +
                                                ", not a torch.Tensor");
    }
    out.push_back(THPVariable_Unpack(item.ptr()));
    ++i;
  }
  return out;
}

void publish_resolved() {
  for (auto& flag : t_resolved_in_delivery) flag->done.store(true, std::memory_order_release);
  t_resolved_in_delivery.clear();
}

void PendingSink::complete(Outcome&& o) {
  if (!attached_) {
    early_ = std::move(o);
    return;
  }
  deliver(std::move(o));
}

void PendingSink::attach(const py::object& sink) {
  attached_ = true;
  if (!sink.is_none()) {
    sink_ = sink.inc_ref().ptr();
    py::object flag = py::getattr(sink, "_resolved", py::none());
    if (!flag.is_none()) resolved_ = flag.cast<std::shared_ptr<ResolvedFlag>>();
  }
  if (early_) {
    deliver(std::move(*early_));
    early_.reset();
    publish_resolved();
  }
}

void PendingSink::deliver(Outcome&& o) {
  if (sink_ == nullptr) return;
  resolve(std::exchange(sink_, nullptr), std::move(o));  // steals the reference
  if (resolved_) t_resolved_in_delivery.push_back(std::move(resolved_));
}

}  // namespace gpulanes::bindings
