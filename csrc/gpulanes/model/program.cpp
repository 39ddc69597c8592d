#include "gpulanes/model/program.h"

#include <torch/script.h>

#include <sstream>
#include <utility>

namespace gpulanes {
namespace {

class TorchScriptInstance final : public ModelInstance {
 public:
  explicit TorchScriptInstance(torch::jit::Module module) : module_(std::move(module)) {}

  // TorchScript runs on the current stream, which the lane has set.
  c10::IValue forward(std::vector<c10::IValue> inputs, void* /*stream*/) override {
    return module_.forward(std::move(inputs));
  }

 private:
  torch::jit::Module module_;  // the shared CPU module, or this lane's copy on its GPU
};

class TorchScriptProgram final : public ModelProgram {
 public:
  explicit TorchScriptProgram(torch::jit::Module module) : module_(std::move(module)) {}

  std::string format() const override { return "torchscript"; }

  std::unique_ptr<ModelInstance> instantiate(const c10::Device& device) const override {
    if (device.is_cpu()) return std::make_unique<TorchScriptInstance>(module_);  // shared
    torch::jit::Module copy = module_.clone();
    copy.to(device);
    copy.eval();
    return std::make_unique<TorchScriptInstance>(std::move(copy));
  }

  ProgramSource source() const override {
    std::ostringstream out;
    module_.save(out);
    return {format(), "", out.str()};
  }

 private:
  const torch::jit::Module module_;  // as loaded, on the CPU
};

}  // namespace

std::shared_ptr<const ModelProgram> torchscript_program(torch::jit::Module module) {
  return std::make_shared<TorchScriptProgram>(std::move(module));
}

}  // namespace gpulanes
