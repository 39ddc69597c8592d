#include "gpulanes/model/registry.h"

#include <algorithm>

#include "gpulanes/core/error.h"

namespace gpulanes {

int ModelRegistry::place(RegisteredModel model) {
  const std::string& name = model.spec.name;
  if (find(name) >= 0) {
    throw Error(ErrorCode::kInvalidInput, "a model named '" + name + "' is already registered");
  }
  if (staged_ >= 0) throw Error(ErrorCode::kInvalidInput, "another model is being registered");
  if (!free_.empty()) {
    const int slot = free_.front();
    free_.erase(free_.begin());
    models_[static_cast<std::size_t>(slot)] = std::move(model);  // retired_ stays set: unseen
    staged_ = slot;
    return slot;
  }
  if (models_.size() >= static_cast<std::size_t>(kMaxModels)) {
    throw Error(ErrorCode::kInvalidInput,
                "a runtime holds at most " + std::to_string(kMaxModels) + " models at once");
  }
  models_.push_back(std::move(model));  // within capacity: no other model moves
  staged_ = static_cast<int>(models_.size()) - 1;
  return staged_;
}

void ModelRegistry::publish(int index) {
  auto next = std::make_shared<Names>(*names_.load());  // only this (control) thread replaces it
  next->emplace(models_[static_cast<std::size_t>(index)].spec.name, index);
  if (index >= size()) count_.store(index + 1, std::memory_order_release);
  retired_[static_cast<std::size_t>(index)].store(false, std::memory_order_release);
  names_.store(std::move(next));
  staged_ = -1;
}

int ModelRegistry::stage_virtual(ModelSpec spec) {
  validate_spec(spec, /*needs_inputs=*/false);
  return place(RegisteredModel{std::move(spec), nullptr, {}});
}

int ModelRegistry::stage(ModelSpec spec, std::shared_ptr<const ModelProgram> program,
                         std::vector<at::Tensor> example) {
  validate_spec(spec);
  validate_inputs(spec, example);
  if (!program) throw Error(ErrorCode::kInvalidInput, "model '" + spec.name + "' has no program");
  if (!spec.batched) program = unbatched_program(std::move(program));
  return place(RegisteredModel{std::move(spec), std::move(program), std::move(example)});
}

void ModelRegistry::commit_staged() {
  if (staged_ >= 0) publish(staged_);
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

void ModelRegistry::release(int index) {
  if (!retired(index) || index == staged_) return;
  if (std::find(free_.begin(), free_.end(), index) != free_.end()) return;
  free_.insert(std::lower_bound(free_.begin(), free_.end(), index), index);
}

void ModelRegistry::drop_staged() {
  if (staged_ < 0) return;
  if (staged_ == staged_size() - 1 && staged_ >= size()) {
    models_.pop_back();
  } else {  // a released slot: released again, keeping only the spec (as retire() does)
    RegisteredModel& model = models_[static_cast<std::size_t>(staged_)];
    model.program.reset();
    model.example.clear();
    free_.insert(std::lower_bound(free_.begin(), free_.end(), staged_), staged_);
  }
  staged_ = -1;
}

int ModelRegistry::find(const std::string& name) const {
  const std::shared_ptr<const Names> names = names_.load();
  auto it = names->find(name);
  return it == names->end() ? -1 : it->second;
}

int ModelRegistry::live() const { return static_cast<int>(names_.load()->size()); }

}  // namespace gpulanes
