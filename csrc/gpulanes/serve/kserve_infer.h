// The KServe v2 ModelInfer request as the core serves it: decoding a request's tensors into
// checked per-row samples, the deadline and priority its parameters carry, and the reply built
// from every row's outputs. No gRPC here (only the protocol's protobuf messages), so the rules
// are testable without a server; the wording of every refusal is that of the Python front ends
// (python/gpulanes/serve/protocol.py), which clients and tests see alike.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "gpulanes/core/error.h"
#include "gpulanes/core/time.h"
#include "kserve_v2.pb.h"

namespace gpulanes::serve {

// What the server knows about one served model: the protocol's names for its tensors and the
// shape and dtype of one sample of each input.
struct ServedModel {
  std::vector<std::string> input_names;            // in the model's argument order
  std::vector<at::ScalarType> input_dtypes;        // per input
  std::vector<std::vector<std::int64_t>> samples;  // per input: one sample's shape (no rows)
  std::vector<std::string> output_names;           // configured names; OUTPUT__i beyond them
  int max_rows = 1 << 30;                          // its own limit (max_batch_size) on rows
};

// A decoded request: one gpulanes request per row.
struct DecodedInfer {
  std::vector<std::vector<at::Tensor>> rows;  // rows[r][i]: input i of row r (no batch dim)
  std::optional<double> timeout_ms;           // from parameters.timeout (us on the wire)
  int priority = 0;                           // gpulanes' 0 (latency-critical) or 1
  std::vector<std::string> requested;         // outputs asked for; empty: all
};

// KServe v2 datatype name of a dtype ("" when the protocol cannot carry it) and back.
const char* datatype_name(at::ScalarType dtype);
std::optional<at::ScalarType> datatype_from(const std::string& name);

// Checks `request` against `model` and splits it into rows. The tensors of rows view
// `request`'s raw bytes where they can: `request` must outlive them (keep_alive is held by
// each tensor's storage). Throws Error(kInvalidInput) naming the argument.
DecodedInfer decode_infer(const std::string& model_name, const ServedModel& model,
                          const std::shared_ptr<inference::ModelInferRequest>& request,
                          int max_rows);

// Fills `reply` from every row's outputs (rows[r][k]: output k of row r), stacked row-wise.
// Throws Error(kInvalidInput) for an unknown requested output, Error(kModelError) for rows
// that disagree or a dtype the protocol cannot carry.
void encode_outputs(const std::string& model_name, const ServedModel& model, const std::vector<std::string>& requested,
                    const std::vector<std::vector<at::Tensor>>& rows,
                    inference::ModelInferResponse* reply);

// A Python-like repr of a name ('x'), for messages that match the Python front ends.
std::string py_repr(const std::string& s);

}  // namespace gpulanes::serve
