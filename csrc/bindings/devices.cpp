// What this machine's devices offer gpulanes: CUDA lanes, green-context support and how a GPU
// splits into green-context groups.
#include <pybind11/stl.h>

#include "bindings.h"
#include "gpulanes/exec/executor.h"
#include "gpulanes/exec/green_context.h"

namespace gpulanes::bindings {

void init_devices(py::module_& m) {
  m.def("cuda_lane_support", [] { return cuda_device_count() > 0; },
        "Whether this build has CUDA lanes and a usable GPU.");
#ifdef GPULANES_WITH_CUDA
  m.attr("built_with_cuda") = true;  // compiled with CUDA lanes (a GPU may still be missing)
#else
  m.attr("built_with_cuda") = false;
#endif
  m.def("green_context_support", [](int device) { return green_context_support(device); },
        py::arg("device") = 0,
        "'' when this build and machine can split `device` with green contexts, else why not.");
  m.def("green_sm_split", [](int device) {
        const SmSplit s = green_sm_split(device);
        py::dict d;
        d["device_sms"] = s.device_sms;
        d["min_partition"] = s.min_partition;
        d["alignment"] = s.alignment;
        d["group_sms"] = s.group_sms;
        d["groups"] = s.groups;
        d["usable_sms"] = s.usable_sms();
        return d;
      }, py::arg("device") = 0,
        "How `device` splits into green-context groups (a dry run): device_sms, min_partition "
        "and alignment (read from its SM resource), group_sms, groups, usable_sms. Raises "
        "InvalidInput saying why where green contexts are unavailable.");
  m.def("green_groups_for", [](int group_sms, int groups, int device_sms, const std::vector<int>& asked) {
        SmSplit s;
        s.group_sms = group_sms;
        s.groups = groups;
        s.device_sms = device_sms;
        return green_groups_for(s, asked, "the device");
      }, py::arg("group_sms"), py::arg("groups"), py::arg("device_sms"), py::arg("asked"),
        "Groups each green lane of `asked` SMs takes of a split into `groups` groups of "
        "`group_sms`; raises InvalidInput saying what fits when they do not.");
}

}  // namespace gpulanes::bindings
