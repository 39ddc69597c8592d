// A registered model in one of the formats gpulanes runs (TorchScript, AOTInductor packages),
// loaded once; every lane makes its own runnable instance of it for its device. Executors see
// only these two interfaces, so batching, profiles, planning and the lanes do not care which
// format a model came in.
//
// A ModelProgram is immutable once loaded and shared by the registry and every lane (any
// thread may call instantiate()). A ModelInstance belongs to one lane: its worker thread (or the
// thread warming the lane up before the worker starts) is the only caller of forward().
#pragma once

#include <ATen/core/ivalue.h>
#include <c10/core/Device.h>

#include <memory>
#include <string>
#include <vector>

namespace torch::jit { struct Module; }

namespace gpulanes {

class ModelInstance {
 public:
  virtual ~ModelInstance() = default;
  // One forward pass over a batch whose inputs are already on the instance's device. `stream`
  // is the lane's cudaStream_t (null on the CPU); the caller has also made it the current
  // stream. Returns a tensor, or a tuple of tensors for a model with several outputs. Throws
  // whatever the model throws.
  virtual c10::IValue forward(std::vector<c10::IValue> inputs, void* stream) = 0;
};

// What another process loads a program from (a process lane's worker).
struct ProgramSource {
  std::string format;      // "torchscript" or "aoti"
  std::string path;        // the package file (aoti)
  std::string bytes;       // the serialized module (torchscript)
  bool unbatched = false;  // wrapped by unbatched_program()
};

class ModelProgram {
 public:
  virtual ~ModelProgram() = default;
  // "torchscript" or "aoti": for messages and stats.
  virtual std::string format() const = 0;
  // A runnable copy on `device` for one lane. Throws Error(kModelError) when the program cannot
  // run there (e.g. a package compiled for another device), naming both.
  virtual std::unique_ptr<ModelInstance> instantiate(const c10::Device& device) const = 0;
  // How a worker process loads the same program.
  virtual ProgramSource source() const = 0;
};

// A TorchScript module (on the CPU) as a program: CPU lanes share it (TorchScript's forward may
// be called from several threads), and the lanes of one GPU share one copy on it, made by the
// first and freed with the last instance.
std::shared_ptr<const ModelProgram> torchscript_program(torch::jit::Module module);

// A model without a batch dimension (ModelSpec::batched false) as a program of batches of one:
// forward() gets each tensor input's only row and hands its tensors back with a leading
// dimension of 1, so stacking, splitting and the lanes treat it like any other model. A batch
// of more than one row is a kModelError.
std::shared_ptr<const ModelProgram> unbatched_program(std::shared_ptr<const ModelProgram> inner);

}  // namespace gpulanes
