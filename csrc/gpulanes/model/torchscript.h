// Loading TorchScript modules. Python hands a torch.jit.ScriptModule over as the bytes of
// torch.jit.save, so every model the runtime serves is its own copy, owned by the core.
#pragma once

#include <string>

namespace torch::jit { struct Module; }

namespace gpulanes {

// Both throw Error(kModelError) with the loader's message on a missing or corrupt file.
torch::jit::Module load_torchscript_file(const std::string& path);
torch::jit::Module load_torchscript_bytes(const std::string& bytes);

}  // namespace gpulanes
