// gpulanes._C: private extension. Import torch before it (gpulanes/__init__.py does).
#include "bindings.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "gpulanes core (private; use the gpulanes package)";
  gpulanes::bindings::init_errors(m);
  gpulanes::bindings::init_runtime(m);
  gpulanes::bindings::init_sim(m);
  gpulanes::bindings::init_plan(m);
  gpulanes::bindings::init_predict(m);
  gpulanes::bindings::init_devices(m);
  gpulanes::bindings::init_grpc(m);
}
