#include <c10/core/InferenceMode.h>
#include <torch/script.h>

#include <unordered_map>

#include "gpulanes/exec/batching.h"
#include "gpulanes/exec/executor.h"

namespace gpulanes {
namespace {

class CpuExecutor final : public Executor {
 public:
  std::string device() const override { return "cpu"; }

  void load(int index, const torch::jit::Module& module) override {
    // TorchScript forward is safe to call from several threads, so CPU lanes share one module.
    modules_.insert_or_assign(index, module);
  }

  c10::IValue run(int index, std::vector<c10::IValue> inputs) override {
    c10::InferenceMode guard;
    for (auto& in : inputs) {
      in = map_tensors(in, [](const at::Tensor& t) { return t.device().is_cpu() ? t : t.cpu(); });
    }
    return modules_.at(index).forward(std::move(inputs));
  }

 private:
  std::unordered_map<int, torch::jit::Module> modules_;  // model index -> module
};

}  // namespace

std::unique_ptr<Executor> make_cpu_executor() { return std::make_unique<CpuExecutor>(); }

}  // namespace gpulanes
