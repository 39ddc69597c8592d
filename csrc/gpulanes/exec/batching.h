// Turning samples into a batch and a batch output back into per-request outputs.
#pragma once

#include <ATen/core/ivalue.h>

#include <cstddef>
#include <functional>
#include <span>
#include <vector>

#include "gpulanes/core/request.h"

namespace gpulanes {

// Stacks input k of every request along a new leading dimension: one batched tensor per
// forward() argument. All requests are for the same model, so shapes and dtypes agree. A string
// input (string_tensor.h) becomes the List[str] of every request's strings, in order.
std::vector<c10::IValue> stack_inputs(std::span<const RequestPtr> requests);

// The List[str] of a column of string tensors (one per request), in order.
c10::IValue stack_strings(std::span<const at::Tensor> column);

// Splits a batch output (a tensor, or a tuple/list of them, nested) into `n` per-request outputs
// of the same structure by selecting row i of every tensor; a list of n strings (or of n string
// lists) gives request i element i. Throws Error(kModelError) when the
// output holds something else or a tensor's leading dimension is not `n`. With `copy_rows`,
// each row is a copy of its own (on the current stream), so that keeping one request's output
// does not keep the whole batch's memory alive; else rows are views of the batch.
std::vector<c10::IValue> split_output(const c10::IValue& output, std::size_t n,
                                      bool copy_rows = false);

// Applies `fn` to every tensor of a tensor / tuple / list structure, keeping the structure.
c10::IValue map_tensors(const c10::IValue& value,
                        const std::function<at::Tensor(const at::Tensor&)>& fn);

}  // namespace gpulanes
