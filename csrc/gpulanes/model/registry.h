// The registered models: spec, loaded program and one example sample per input (for warm-up).
// Added to by the control thread only (the runtime serializes it), also while serving; read by
// every thread. Storage is reserved up front (kMaxModels slots), so adding never moves a model
// another thread is reading.
//
// A slot's life: staged (the control thread and the lanes it warms up use its index, no other
// thread sees it), live (find() names it; published with release, read with acquire; the name
// map is replaced whole, atomically), retired (unregistered: find() forgets its name, its index
// stays valid for whatever still refers to it, queues, metrics and traces), released (the
// runtime says nothing refers to it any more) and staged again by a later registration. So a
// runtime may register and unregister without end while at most kMaxModels are registered at
// once. A staged model whose warm-up failed is dropped again as if never added.
//
// Other threads read only live slots (retired() false) and the names of retired ones under the
// runtime's locks: a released slot is overwritten by stage(), which the runtime calls under
// those same locks.
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
  static constexpr int kMaxModels = 1024;  // slots: models registered at once

  ModelRegistry() { models_.reserve(kMaxModels); }

  // stage() of a model without weights (module null, no example), for lanes that run nothing
  // (simulated).
  int stage_virtual(ModelSpec spec);
  // A new model, not live yet (at most one staged model at a time), in the lowest released
  // slot, else a new one. Returns its index, staged() until commit_staged() makes it live or
  // drop_staged() forgets it. Throws Error(kInvalidInput) for a duplicate name, a bad spec or
  // a full registry.
  int stage(ModelSpec spec, std::shared_ptr<const ModelProgram> program,
            std::vector<at::Tensor> example);
  void commit_staged();
  void drop_staged();
  // Control thread: the staged model's index, or -1.
  int staged() const { return staged_; }
  // Whether slot `index` would be reused (a released one) by the next stage(), and which.
  int next_slot() const { return free_.empty() ? static_cast<int>(models_.size()) : free_.front(); }
  // Index of `name`, or -1 (also for a retired model).
  int find(const std::string& name) const;
  // Control thread: forgets the name of model `index` and marks it retired (published with
  // release); its program and example are released, since only the control thread reads them.
  void retire(int index);
  // Control thread: nothing refers to retired `index` any more; a later stage() may reuse it.
  void release(int index);
  // Not live: retired, released, or staged into a released slot.
  bool retired(int index) const {
    return retired_[static_cast<std::size_t>(index)].load(std::memory_order_acquire);
  }
  // Control thread: live or staged (what new lanes load).
  bool in_use(int index) const { return index == staged_ || !retired(index); }
  const RegisteredModel& at(int index) const { return models_[static_cast<std::size_t>(index)]; }
  // Slots other threads may index (live ones and retired ones).
  int size() const { return count_.load(std::memory_order_acquire); }
  // size() plus a staged model in a new slot: for the control thread and the lanes it warms up.
  int staged_size() const { return static_cast<int>(models_.size()); }
  // Registered now (live).
  int live() const;

 private:
  using Names = std::unordered_map<std::string, int>;
  int place(RegisteredModel model);
  void publish(int index);

  std::vector<RegisteredModel> models_;  // by index; capacity kMaxModels, never reallocated
  std::atomic<int> count_{0};            // how many of models_ other threads may index
  std::array<std::atomic<bool>, kMaxModels> retired_{};  // by index: not live
  std::vector<int> free_;                // released slots, ascending; the control thread's
  int staged_ = -1;                      // the staged model's slot; the control thread's
  // name -> index, replaced whole by the control thread: a lookup (every submit) takes no lock
  std::atomic<std::shared_ptr<const Names>> names_{std::make_shared<const Names>()};
};

}  // namespace gpulanes
