#include "gpulanes/model/torchscript.h"

#include <torch/script.h>

#include <sstream>

#include "gpulanes/core/error.h"
#include "gpulanes/core/error_text.h"

namespace gpulanes {
namespace {

template <class LoadFn>
torch::jit::Module load_checked(const std::string& what, LoadFn&& load) {
  try {
    torch::jit::Module m = load();
    m.eval();
    return m;
  } catch (const std::exception& e) {
    throw Error(ErrorCode::kModelError, "cannot load TorchScript model from " + what + ": " +
                                            error_text(e));
  }
}

}  // namespace

torch::jit::Module load_torchscript_file(const std::string& path) {
  return load_checked("file '" + path + "'", [&] { return torch::jit::load(path, c10::kCPU); });
}

torch::jit::Module load_torchscript_bytes(const std::string& bytes) {
  return load_checked(std::to_string(bytes.size()) + " bytes", [&] {
    std::istringstream in(bytes);
    return torch::jit::load(in, c10::kCPU);
  });
}

}  // namespace gpulanes
