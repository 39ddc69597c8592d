#include <c10/core/InferenceMode.h>

#include <memory>
#include <mutex>
#include <shared_mutex>
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
    std::shared_ptr<ModelInstance> instance = program.instantiate(c10::Device(c10::kCPU));
    std::unique_lock<std::shared_mutex> lock(mu_);
    instances_.insert_or_assign(index, std::move(instance));
    loads_.fetch_add(1, std::memory_order_relaxed);
  }

  void unload(int index) override {
    std::shared_ptr<ModelInstance> gone;  // freed after the lock: a module's destructor is slow
    std::unique_lock<std::shared_mutex> lock(mu_);
    if (auto it = instances_.find(index); it != instances_.end()) {
      gone = std::move(it->second);
      instances_.erase(it);
    }
  }

  // TorchScript's forward may run on several threads at once (CPU lanes share one module).
  bool live_loads() const override { return true; }

  c10::IValue run(int index, std::vector<c10::IValue> inputs) override {
    c10::InferenceMode guard;
    for (auto& in : inputs) {
      in = map_tensors(in, [](const at::Tensor& t) { return t.device().is_cpu() ? t : t.cpu(); });
    }
    std::shared_ptr<ModelInstance> instance;
    {
      std::shared_lock<std::shared_mutex> lock(mu_);
      instance = instances_.at(index);
    }
    return instance->forward(std::move(inputs), /*stream=*/nullptr);
  }

 private:
  mutable std::shared_mutex mu_;  // guards instances_: loads come from the control thread
  std::unordered_map<int, std::shared_ptr<ModelInstance>> instances_;  // by model index
};

}  // namespace

std::unique_ptr<Executor> make_cpu_executor() { return std::make_unique<CpuExecutor>(); }

}  // namespace gpulanes
