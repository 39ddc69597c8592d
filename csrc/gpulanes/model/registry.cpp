#include "gpulanes/model/registry.h"

#include <torch/script.h>

#include "gpulanes/core/error.h"

namespace gpulanes {

int ModelRegistry::add(ModelSpec spec, torch::jit::Module module, std::vector<at::Tensor> example) {
  validate_spec(spec);
  if (index_.count(spec.name)) {
    throw Error(ErrorCode::kInvalidInput, "a model named '" + spec.name + "' is already registered");
  }
  validate_inputs(spec, example);
  const int idx = static_cast<int>(models_.size());
  index_.emplace(spec.name, idx);
  models_.push_back(RegisteredModel{std::move(spec),
                                    std::make_shared<torch::jit::Module>(std::move(module)),
                                    std::move(example)});
  return idx;
}

int ModelRegistry::add_virtual(ModelSpec spec) {
  validate_spec(spec, /*needs_inputs=*/false);
  if (index_.count(spec.name)) {
    throw Error(ErrorCode::kInvalidInput, "a model named '" + spec.name + "' is already registered");
  }
  const int idx = static_cast<int>(models_.size());
  index_.emplace(spec.name, idx);
  models_.push_back(RegisteredModel{std::move(spec), nullptr, {}});
  return idx;
}

int ModelRegistry::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? -1 : it->second;
}

}  // namespace gpulanes
