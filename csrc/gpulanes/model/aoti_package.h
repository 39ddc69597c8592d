// AOTInductor packages (.pt2 files made by torch._inductor.aoti_compile_and_package) as model
// programs: ahead-of-time compiled C++ (CPU) or CUDA kernels in a zip archive, loaded with
// torch::inductor::AOTIModelPackageLoader, one loader per lane (a loader runs one batch at a
// time), run on the lane's thread and stream.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "gpulanes/model/program.h"

namespace gpulanes {

// Metadata key gpulanes writes into the packages it compiles: the torch version that compiled
// it. Packages made elsewhere lack it; a load failure then names this torch only.
inline constexpr const char* kPackageTorchVersionKey = "gpulanes_torch_version";

// Opens the package at `path` (kept: lanes load from it later) and checks that it can run in
// this process: its platform and CPU instruction set, and the torch version when recorded.
// Throws Error(kModelError) for a missing, corrupt or truncated package, or one made for
// another torch, platform or CPU, naming what it was made for and what this is.
std::shared_ptr<const ModelProgram> load_aoti_package(const std::string& path);

// The package's metadata (device, platform, CPU ISA, gpulanes' keys). Throws as above.
std::map<std::string, std::string> aoti_package_metadata(const std::string& path);

}  // namespace gpulanes
