// The registered models: spec, loaded module and one example sample per input (for warm-up).
// Mutated only before the runtime starts (by the control thread); read-only afterwards, so
// lookups from submitting threads need no lock.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "gpulanes/model/model_spec.h"

namespace torch::jit { struct Module; }

namespace gpulanes {

struct RegisteredModel {
  ModelSpec spec;                              // signature, SLO, bounds
  std::shared_ptr<torch::jit::Module> module;  // the loaded TorchScript module (on the CPU);
                                               // null for a virtual model
  std::vector<at::Tensor> example;             // one sample per input, for warm-up
};

class ModelRegistry {
 public:
  // Returns the new model's index. Throws Error(kInvalidInput) for a duplicate name or bad spec.
  int add(ModelSpec spec, torch::jit::Module module, std::vector<at::Tensor> example);
  // A model without weights (module null, no example), for lanes that run nothing (simulated).
  int add_virtual(ModelSpec spec);
  // Index of `name`, or -1.
  int find(const std::string& name) const;
  const RegisteredModel& at(int index) const { return models_.at(index); }
  int size() const { return static_cast<int>(models_.size()); }

 private:
  std::vector<RegisteredModel> models_;        // by index
  std::unordered_map<std::string, int> index_;  // name -> index
};

}  // namespace gpulanes
