#include "gpulanes/model/registry.h"

#include "gpulanes/core/error.h"

namespace gpulanes {

int ModelRegistry::append(RegisteredModel model) {
  const std::string& name = model.spec.name;
  if (find(name) >= 0) {
    throw Error(ErrorCode::kInvalidInput, "a model named '" + name + "' is already registered");
  }
  if (staged_size() != size()) {
    throw Error(ErrorCode::kInvalidInput, "another model is being registered");
  }
  if (models_.size() >= static_cast<std::size_t>(kMaxModels)) {
    throw Error(ErrorCode::kInvalidInput,
                "a runtime holds at most " + std::to_string(kMaxModels) + " models");
  }
  models_.push_back(std::move(model));  // within capacity: no other model moves
  return static_cast<int>(models_.size()) - 1;
}

void ModelRegistry::publish(int index) {
  auto next = std::make_shared<Names>(*names_.load());  // only this (control) thread replaces it
  next->emplace(models_[static_cast<std::size_t>(index)].spec.name, index);
  count_.store(index + 1, std::memory_order_release);
  names_.store(std::move(next));
}

int ModelRegistry::add(ModelSpec spec, std::shared_ptr<const ModelProgram> program,
                       std::vector<at::Tensor> example) {
  const int idx = stage(std::move(spec), std::move(program), std::move(example));
  publish(idx);
  return idx;
}

int ModelRegistry::add_virtual(ModelSpec spec) {
  validate_spec(spec, /*needs_inputs=*/false);
  const int idx = append(RegisteredModel{std::move(spec), nullptr, {}});
  publish(idx);
  return idx;
}

int ModelRegistry::stage(ModelSpec spec, std::shared_ptr<const ModelProgram> program,
                         std::vector<at::Tensor> example) {
  validate_spec(spec);
  validate_inputs(spec, example);
  if (!program) throw Error(ErrorCode::kInvalidInput, "model '" + spec.name + "' has no program");
  return append(RegisteredModel{std::move(spec), std::move(program), std::move(example)});
}

void ModelRegistry::commit_staged() {
  if (staged_size() > size()) publish(staged_size() - 1);
}

void ModelRegistry::retire(int index) {
  RegisteredModel& model = models_.at(static_cast<std::size_t>(index));
  auto next = std::make_shared<Names>(*names_.load());
  next->erase(model.spec.name);
  retired_[static_cast<std::size_t>(index)].store(true, std::memory_order_release);
  names_.store(std::move(next));
  model.program.reset();
  model.example.clear();
}

void ModelRegistry::drop_staged() {
  if (staged_size() > size()) models_.pop_back();
}

int ModelRegistry::find(const std::string& name) const {
  const std::shared_ptr<const Names> names = names_.load();
  auto it = names->find(name);
  return it == names->end() ? -1 : it->second;
}

}  // namespace gpulanes
