#include "gpulanes/model/program.h"

#include <torch/script.h>

#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <utility>

#include "gpulanes/core/error.h"

namespace gpulanes {
namespace {

class TorchScriptInstance final : public ModelInstance {
 public:
  explicit TorchScriptInstance(std::shared_ptr<torch::jit::Module> module)
      : module_(std::move(module)) {}

  // TorchScript runs on the current stream, which the lane has set. forward() may run on
  // several threads at once (lanes share the module): it only reads the weights.
  c10::IValue forward(std::vector<c10::IValue> inputs, void* /*stream*/) override {
    return module_->forward(std::move(inputs));
  }

 private:
  std::shared_ptr<torch::jit::Module> module_;  // shared by every lane of its device
};

class TorchScriptProgram final : public ModelProgram {
 public:
  explicit TorchScriptProgram(torch::jit::Module module)
      : module_(std::make_shared<torch::jit::Module>(std::move(module))) {}

  std::string format() const override { return "torchscript"; }

  // Lanes of one device share one copy of the weights (CPU lanes the loaded module itself);
  // each lane's instance keeps it alive, so it is freed once the last lane unloads it.
  std::unique_ptr<ModelInstance> instantiate(const c10::Device& device) const override {
    if (device.is_cpu()) return std::make_unique<TorchScriptInstance>(module_);
    std::lock_guard<std::mutex> lock(mu_);
    std::shared_ptr<torch::jit::Module> shared = on_device_[device.index()].lock();
    if (!shared) {
      torch::jit::Module copy = module_->clone();
      copy.to(device);
      copy.eval();
      shared = std::make_shared<torch::jit::Module>(std::move(copy));
      on_device_[device.index()] = shared;
    }
    return std::make_unique<TorchScriptInstance>(std::move(shared));
  }

  ProgramSource source() const override {
    std::ostringstream out;
    module_->save(out);
    return {format(), "", out.str()};
  }

 private:
  const std::shared_ptr<torch::jit::Module> module_;  // as loaded, on the CPU
  mutable std::mutex mu_;  // guards on_device_: lanes instantiate from their own threads
  mutable std::map<int, std::weak_ptr<torch::jit::Module>> on_device_;  // GPU -> its copy
};

// The output of a batch of one: tensors get a leading dimension of 1; a string or a list of
// strings becomes a list of one (splitting gives the request element 0).
c10::IValue with_rows(const c10::IValue& v) {
  if (v.isTensor()) return v.toTensor().unsqueeze(0);
  if (v.isString()) return c10::List<std::string>({v.toStringRef()});
  if (v.isList() && v.toList().elementType()->kind() == c10::TypeKind::StringType) {
    c10::impl::GenericList out(c10::ListType::create(c10::StringType::get()));
    out.push_back(v);
    return out;
  }
  if (v.isTuple()) {
    std::vector<c10::IValue> out;
    for (const auto& x : v.toTupleRef().elements()) out.push_back(with_rows(x));
    return c10::ivalue::Tuple::create(std::move(out));
  }
  if (v.isList()) {
    c10::impl::GenericList out(c10::AnyType::get());
    for (const auto& x : v.toListRef()) out.push_back(with_rows(x));
    return out;
  }
  return v;  // not a tensor: splitting the batch says what is wrong
}

class UnbatchedInstance final : public ModelInstance {
 public:
  explicit UnbatchedInstance(std::unique_ptr<ModelInstance> inner) : inner_(std::move(inner)) {}

  c10::IValue forward(std::vector<c10::IValue> inputs, void* stream) override {
    for (c10::IValue& v : inputs) {
      if (!v.isTensor()) continue;  // a string input's list is the request's whole list
      const at::Tensor& t = v.toTensor();
      if (t.dim() == 0 || t.size(0) != 1) {
        throw Error(ErrorCode::kModelError,
                    "a model without a batch dimension runs one request at a time");
      }
      v = t.select(0, 0);
    }
    return with_rows(inner_->forward(std::move(inputs), stream));
  }

 private:
  std::unique_ptr<ModelInstance> inner_;  // the model as it is, without a batch dimension
};

class UnbatchedProgram final : public ModelProgram {
 public:
  explicit UnbatchedProgram(std::shared_ptr<const ModelProgram> inner) : inner_(std::move(inner)) {}
  std::string format() const override { return inner_->format(); }
  std::unique_ptr<ModelInstance> instantiate(const c10::Device& device) const override {
    return std::make_unique<UnbatchedInstance>(inner_->instantiate(device));
  }
  ProgramSource source() const override {
    ProgramSource s = inner_->source();
    s.unbatched = true;
    return s;
  }

 private:
  const std::shared_ptr<const ModelProgram> inner_;
};

}  // namespace

std::shared_ptr<const ModelProgram> torchscript_program(torch::jit::Module module) {
  return std::make_shared<TorchScriptProgram>(std::move(module));
}

std::shared_ptr<const ModelProgram> unbatched_program(std::shared_ptr<const ModelProgram> inner) {
  return std::make_shared<UnbatchedProgram>(std::move(inner));
}

}  // namespace gpulanes
