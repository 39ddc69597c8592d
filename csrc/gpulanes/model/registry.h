// The registered models: spec, loaded program and one example sample per input (for warm-up).
// Added to by the control thread only (the runtime serializes it), also while serving; read by
// every thread. Storage is reserved up front (kMaxModels), so adding never moves a model another
// thread is reading. A model added while serving is first staged: it has an index that the
// control thread and the lanes it is warming up use, but size() and find() do not count it
// until commit_staged() (size() published with release, read with acquire; the name map is
// replaced whole, atomically), so no other thread sees a model that is not ready. A staged
// model whose warm-up failed is dropped again as if never added. A model unregistered while
// serving is retired, not removed: its index stays valid for every thread (queues, metrics and
// traces are indexed by it) while find() forgets its name, so the name may be registered again
// under a new index. Retired models count against kMaxModels.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <atomic>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "gpulanes/model/model_spec.h"
#include "gpulanes/model/program.h"

namespace gpulanes {

struct RegisteredModel {
  ModelSpec spec;                              // signature, SLO, bounds
  std::shared_ptr<const ModelProgram> program;  // the loaded model, any format; null for a
                                                // virtual model
  std::vector<at::Tensor> example;              // one sample per input, for warm-up
};

class ModelRegistry {
 public:
  static constexpr int kMaxModels = 1024;  // registrations one runtime can ever make

  ModelRegistry() { models_.reserve(kMaxModels); }

  // Returns the new model's index. Throws Error(kInvalidInput) for a duplicate name, a bad spec
  // or a full registry.
  int add(ModelSpec spec, std::shared_ptr<const ModelProgram> program,
          std::vector<at::Tensor> example);
  // A model without weights (module null, no example), for lanes that run nothing (simulated).
  int add_virtual(ModelSpec spec);
  // add() without counting it yet (at most one staged model at a time): its index is
  // staged_size() - 1.
  int stage(ModelSpec spec, std::shared_ptr<const ModelProgram> program,
            std::vector<at::Tensor> example);
  void commit_staged();
  void drop_staged();
  // Index of `name`, or -1 (also for a retired model).
  int find(const std::string& name) const;
  // Control thread: forgets the name of model `index` and marks it retired (published with
  // release); its program and example are released, since only the control thread reads them.
  void retire(int index);
  bool retired(int index) const {
    return retired_[static_cast<std::size_t>(index)].load(std::memory_order_acquire);
  }
  const RegisteredModel& at(int index) const { return models_[static_cast<std::size_t>(index)]; }
  // Models every thread may use.
  int size() const { return count_.load(std::memory_order_acquire); }
  // size() plus a staged model: for the control thread and the lanes it warms up.
  int staged_size() const { return static_cast<int>(models_.size()); }

 private:
  using Names = std::unordered_map<std::string, int>;
  int append(RegisteredModel model);
  void publish(int index);

  std::vector<RegisteredModel> models_;  // by index; capacity kMaxModels, never reallocated
  std::atomic<int> count_{0};            // how many of models_ other threads may use
  std::array<std::atomic<bool>, kMaxModels> retired_{};  // by index: unregistered
  // name -> index, replaced whole by the control thread: a lookup (every submit) takes no lock
  std::atomic<std::shared_ptr<const Names>> names_{std::make_shared<const Names>()};
};

}  // namespace gpulanes
