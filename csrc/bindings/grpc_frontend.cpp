// The core's gRPC front end (gpulanes/serve/grpc_frontend.h) for gpulanes.serve.grpc_server. The
// forward hook runs Python on grpc++'s threads: it takes the GIL for the call only; everything
// that may wait for calls to end (construction, stop, destruction) runs with the GIL released,
// since answering a forwarded call needs it.
#include "bindings.h"

#include <optional>

#ifdef GPULANES_WITH_GRPC
#include <pybind11/stl.h>

#include <grpcpp/grpcpp.h>

#include "gpulanes/serve/grpc_frontend.h"
#endif

namespace gpulanes::bindings {

#ifdef GPULANES_WITH_GRPC
namespace {

using serve::ForwardedCall;
using serve::GrpcFrontend;
using serve::Reply;

struct DeleteWithoutGil {
  void operator()(GrpcFrontend* f) const {
    py::gil_scoped_release nogil;
    delete f;
  }
};

// A Python callable kept by a C++ object: released under the GIL whichever thread drops it.
std::shared_ptr<py::function> keep(py::function fn) {
  return std::shared_ptr<py::function>(new py::function(std::move(fn)), [](py::function* f) {
    py::gil_scoped_acquire gil;
    delete f;
  });
}

}  // namespace

void init_grpc(py::module_& m) {
  m.attr("HAS_GRPC_FRONTEND") = true;
  m.attr("GRPC_VERSION") = grpc::Version();
  py::class_<Reply, std::shared_ptr<Reply>>(m, "GrpcReply")
      .def("__call__", [](Reply& r, int code, const std::string& message, const py::bytes& payload) {
        std::string bytes = payload;
        py::gil_scoped_release nogil;
        r(code, message, bytes);
      }, py::arg("code"), py::arg("message"), py::arg("payload"),
         "Finishes the call: code 0 with the serialized reply, else a gRPC status code.");
  py::class_<GrpcFrontend, std::unique_ptr<GrpcFrontend, DeleteWithoutGil>>(m, "GrpcFrontend")
      .def(py::init([](const py::object& runtime, std::string address, int max_message_bytes,
                       std::optional<std::string> token, int max_rows, py::function forward,
                       std::optional<std::pair<std::string, std::string>> tls) {
             auto fn = keep(std::move(forward));
             serve::ForwardFn hook = [fn](ForwardedCall call, std::shared_ptr<Reply> reply) {
               py::gil_scoped_acquire gil;
               try {
                 py::object remaining = py::none();
                 if (call.remaining_s >= 0) remaining = py::float_(call.remaining_s);
                 (*fn)(call.method, py::bytes(call.payload), remaining, std::move(reply));
               } catch (py::error_already_set& e) {
                 e.discard_as_unraisable("gpulanes gRPC forward hook");  // the Reply answers
               }
             };
             serve::GrpcFrontendOptions o{std::move(address), max_message_bytes, std::move(token),
                                          max_rows, std::move(tls)};
             auto core = runtime_core(runtime);
             py::gil_scoped_release nogil;
             return std::unique_ptr<GrpcFrontend, DeleteWithoutGil>(
                 new GrpcFrontend(std::move(core), std::move(o), std::move(hook)));
           }),
           py::arg("runtime"), py::arg("address"), py::arg("max_message_bytes"), py::arg("token"),
           py::arg("max_rows"), py::arg("forward"), py::arg("tls") = py::none())
      .def_property_readonly("port", &GrpcFrontend::port)
      .def("set_model", [](GrpcFrontend& f, const std::string& name,
                           std::vector<std::string> inputs, const std::vector<std::string>& datatypes,
                           std::vector<std::vector<std::int64_t>> samples,
                           std::vector<std::string> outputs, int max_rows) {
             serve::ServedModel model{std::move(inputs), {}, std::move(samples), std::move(outputs),
                                      max_rows};
             for (const auto& d : datatypes) {
               auto dtype = serve::datatype_from(d);
               if (!dtype) throw Error(ErrorCode::kInvalidInput, "unknown datatype " + d);
               model.input_dtypes.push_back(*dtype);
             }
             f.set_model(name, std::move(model));
           }, py::arg("name"), py::arg("inputs"), py::arg("datatypes"), py::arg("samples"),
           py::arg("outputs"), py::arg("max_rows") = 1 << 30)
      .def("forget_model", &GrpcFrontend::forget_model, py::arg("name"))
      .def("stop", &GrpcFrontend::stop, py::arg("grace_s"), py::call_guard<py::gil_scoped_release>());
}
#else
void init_grpc(py::module_& m) { m.attr("HAS_GRPC_FRONTEND") = false; }
#endif

}  // namespace gpulanes::bindings
