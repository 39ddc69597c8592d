#include "gpulanes/model/model_spec.h"

#include <ATen/core/Tensor.h>

#include <sstream>

#include "gpulanes/core/error.h"
#include "gpulanes/core/string_tensor.h"

namespace gpulanes {

bool TensorSpec::strings() const { return dtype == kStringDtype; }

std::string describe(const TensorSpec& spec) {
  if (spec.strings()) return spec.shape.empty() ? "one string" : "a list of strings";
  std::ostringstream os;
  os << c10::toString(spec.dtype) << "[";
  for (std::size_t i = 0; i < spec.shape.size(); ++i) os << (i ? ", " : "") << spec.shape[i];
  os << "]";
  return os.str();
}

void validate_inputs(const ModelSpec& spec, const std::vector<at::Tensor>& inputs) {
  if (inputs.size() != spec.inputs.size()) {
    throw Error(ErrorCode::kInvalidInput,
                "model '" + spec.name + "' takes " + std::to_string(spec.inputs.size()) +
                    " input(s) per request, got " + std::to_string(inputs.size()));
  }
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const at::Tensor& t = inputs[i];
    const TensorSpec& want = spec.inputs[i];
    if (!t.defined()) {
      throw Error(ErrorCode::kInvalidInput,
                  "model '" + spec.name + "' input " + std::to_string(i) + " is undefined");
    }
    const std::string which = "model '" + spec.name + "' input " + std::to_string(i);
    if (want.strings()) {
      const std::size_t n = count_strings(t, which);
      if (want.shape.empty() && n != 1) {
        throw Error(ErrorCode::kInvalidInput, which + " must be one string per request, got " +
                                                  std::to_string(n));
      }
      continue;
    }
    if (is_string_tensor(t)) {
      throw Error(ErrorCode::kInvalidInput, which + " takes a tensor, " + describe(want) +
                                                " (one sample, no batch dimension), not strings");
    }
    // Checked before sizes(): a nested tensor has none, and a lane cannot stack a sparse, mkldnn
    // or meta tensor into a batch.
    if (t.is_nested() || t.layout() != c10::kStrided) {
      std::ostringstream os;
      os << which << " must be a dense (strided) tensor, got ";
      if (t.is_nested()) {
        os << "a nested tensor";
      } else {
        os << "layout " << t.layout();
      }
      throw Error(ErrorCode::kInvalidInput, os.str());
    }
    if (!t.is_cpu() && !t.is_cuda()) {
      throw Error(ErrorCode::kInvalidInput,
                  which + " must be on the CPU or a CUDA GPU, got device " + t.device().str());
    }
    TensorSpec got{t.sizes().vec(), t.scalar_type()};
    if (got.dtype != want.dtype || got.shape != want.shape) {
      throw Error(ErrorCode::kInvalidInput,
                  "model '" + spec.name + "' input " + std::to_string(i) + " must be one sample " +
                      describe(want) + " (no batch dimension), got " + describe(got));
    }
  }
}

void validate_spec(const ModelSpec& spec, bool needs_inputs) {
  auto bad = [&](const std::string& why) {
    throw Error(ErrorCode::kInvalidInput, "cannot register model '" + spec.name + "': " + why);
  };
  if (spec.name.empty()) bad("the name is empty");
  if (needs_inputs && spec.inputs.empty()) bad("example_inputs is empty");
  if (spec.slo <= 0) bad("slo must be > 0");
  if (spec.max_batch_size < 1) bad("max_batch_size must be >= 1");
  if (!spec.batched && spec.max_batch_size != 1) {
    bad("a model without a batch dimension runs one request at a time (max_batch_size 1)");
  }
  if (spec.max_queue < 1) bad("max_queue must be >= 1");
}

}  // namespace gpulanes
