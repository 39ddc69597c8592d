// The regressors for notebooks: gpulanes.predict.RLS / SGD / least_squares on numpy arrays.
#include <pybind11/eigen.h>
#include <pybind11/stl.h>

#include "bindings.h"
#include "gpulanes/predict/regressors.h"

namespace gpulanes::bindings {

void init_predict(py::module_& m) {
  py::class_<Rls>(m, "Rls")
      .def(py::init<int, double, double, double>(), py::arg("dim"), py::arg("forgetting"),
           py::arg("delta"), py::arg("max_eigenvalue"))
      .def("predict", &Rls::predict, py::arg("x"))
      .def("update", &Rls::update, py::arg("x"), py::arg("y"))
      .def_property("weights", &Rls::weights, &Rls::set_weights)
      .def_property_readonly("covariance", &Rls::covariance)
      .def_property_readonly("resets", &Rls::resets);
  py::class_<Sgd>(m, "Sgd")
      .def(py::init<int, double>(), py::arg("dim"), py::arg("lr"))
      .def("predict", &Sgd::predict, py::arg("x"))
      .def("update", &Sgd::update, py::arg("x"), py::arg("y"))
      .def_property("weights", &Sgd::weights, &Sgd::set_weights);
  m.def("least_squares", &least_squares, py::arg("X"), py::arg("y"));
}

}  // namespace gpulanes::bindings
