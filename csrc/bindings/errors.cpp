#include <array>
#include <exception>

#include "bindings.h"

namespace gpulanes::bindings {

py::handle error_type(ErrorCode code) {
  // Deliberately leaked references: these classes must outlive every thread that may resolve a
  // future, and a static py::object would be decref'd after the interpreter is gone.
  static std::array<PyObject*, 9> cache{};
  const auto i = static_cast<std::size_t>(code);
  if (i >= cache.size()) return PyExc_RuntimeError;
  if (!cache[i]) {
    const char* name = code == ErrorCode::kInternal ? "GpuLanesError" : error_code_name(code);
    py::object cls = py::module_::import("gpulanes.errors").attr(name);
    cache[i] = cls.release().ptr();
  }
  return cache[i];
}

py::object make_error(ErrorCode code, const std::string& message) {
  return error_type(code)(message);
}

void init_errors(py::module_& m) {
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      PyErr_SetObject(error_type(e.code()).ptr(), py::str(e.what()).ptr());
    }
  });
  m.def("error_code_names", [] {
    py::list names;
    for (int c = 0; c <= static_cast<int>(ErrorCode::kInternal); ++c) {
      names.append(error_code_name(static_cast<ErrorCode>(c)));
    }
    return names;
  }, "Names of the core's error codes, in code order (for consistency tests).");
}

}  // namespace gpulanes::bindings
