#include <c10/core/InferenceMode.h>

#include <unordered_map>

#include "gpulanes/exec/batching.h"
#include "gpulanes/exec/executor.h"
#include "gpulanes/model/program.h"

namespace gpulanes {
namespace {

class CpuExecutor final : public Executor {
 public:
  std::string device() const override { return "cpu"; }

  void load(int index, const ModelProgram& program) override {
    instances_.insert_or_assign(index, program.instantiate(c10::Device(c10::kCPU)));
  }

  c10::IValue run(int index, std::vector<c10::IValue> inputs) override {
    c10::InferenceMode guard;
    for (auto& in : inputs) {
      in = map_tensors(in, [](const at::Tensor& t) { return t.device().is_cpu() ? t : t.cpu(); });
    }
    return instances_.at(index)->forward(std::move(inputs), /*stream=*/nullptr);
  }

 private:
  std::unordered_map<int, std::unique_ptr<ModelInstance>> instances_;  // by model index
};

}  // namespace

std::unique_ptr<Executor> make_cpu_executor() { return std::make_unique<CpuExecutor>(); }

}  // namespace gpulanes
