#include "outcomes.h"

#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "bindings.h"
#include "gpulanes/core/error_text.h"
#include "gpulanes/core/string_tensor.h"

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
  if (v.isString()) {
    // A str when it is UTF-8 (what a TorchScript model's str holds from Python's), else the
    // bytes as they are (a BYTES tensor's element may be any bytes).
    const std::string& s = v.toStringRef();
    PyObject* text = PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "strict");
    if (text != nullptr) return py::reinterpret_steal<py::object>(text);
    PyErr_Clear();
    return py::bytes(s);
  }
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

namespace {

// A str as its UTF-8 bytes, a bytes-like object as it is; nullopt for anything else.
std::optional<std::string> string_of(py::handle item) {
  if (PyUnicode_Check(item.ptr())) {
    Py_ssize_t size = 0;
    const char* data = PyUnicode_AsUTF8AndSize(item.ptr(), &size);
    if (data == nullptr) throw py::error_already_set();  // lone surrogates: not UTF-8
    return std::string(data, static_cast<std::size_t>(size));
  }
  if (PyBytes_Check(item.ptr())) {
    return std::string(PyBytes_AS_STRING(item.ptr()),
                       static_cast<std::size_t>(PyBytes_GET_SIZE(item.ptr())));
  }
  if (PyByteArray_Check(item.ptr())) {
    return std::string(PyByteArray_AS_STRING(item.ptr()),
                       static_cast<std::size_t>(PyByteArray_GET_SIZE(item.ptr())));
  }
  return std::nullopt;
}

// `item` (a str, bytes, or a list/tuple of them) as a string tensor; nullopt when it is none.
std::optional<at::Tensor> strings_of(py::handle item) {
  std::vector<std::string> strings;
  if (auto one = string_of(item)) {
    strings.push_back(std::move(*one));
  } else if (PyList_Check(item.ptr()) || PyTuple_Check(item.ptr())) {
    for (py::handle element : py::reinterpret_borrow<py::sequence>(item)) {
      auto s = string_of(element);
      if (!s) return std::nullopt;
      strings.push_back(std::move(*s));
    }
  } else {
    return std::nullopt;
  }
  std::vector<std::string_view> views(strings.begin(), strings.end());
  return pack_strings(views);
}

}  // namespace

std::vector<at::Tensor> inputs_from(const py::sequence& seq, const char* what) {
  std::vector<at::Tensor> out;
  out.reserve(py::len(seq));
  std::size_t i = 0;
  for (py::handle item : seq) {
    const std::string which = std::string(what) + " " + std::to_string(i);
    if (THPVariable_Check(item.ptr())) {
      out.push_back(THPVariable_Unpack(item.ptr()));
    } else {
      std::optional<at::Tensor> strings;
      try {
        strings = strings_of(item);
      } catch (py::error_already_set& e) {
        throw Error(ErrorCode::kInvalidInput, which + " holds a str that is not valid UTF-8");
      }
      if (!strings) {
        throw Error(ErrorCode::kInvalidInput,
                    which + " is a " + std::string(py::str(py::type::of(item).attr("__name__"))) +
                        ", not a torch.Tensor (or, for a string input, a str, bytes or a "
                        "list of them)");
      }
      out.push_back(std::move(*strings));
    }
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
