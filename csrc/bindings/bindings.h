// Shared declarations of the binding layer, which is split by topic: errors.cpp (typed errors),
// runtime.cpp (Runtime, futures), module.cpp (the _C module).
#pragma once

#include <pybind11/pybind11.h>

#include <string>

#include "gpulanes/core/error.h"

namespace gpulanes::bindings {

namespace py = pybind11;

// The Python exception class for `code`, from gpulanes.errors (cached for the process lifetime).
py::handle error_type(ErrorCode code);
// An instance of that class carrying `message`.
py::object make_error(ErrorCode code, const std::string& message);

void init_errors(py::module_& m);
void init_runtime(py::module_& m);

}  // namespace gpulanes::bindings
