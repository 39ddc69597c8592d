#include "gpulanes/exec/batching.h"

#include <ATen/ATen.h>

#include <string>

#include "gpulanes/core/error.h"
#include "gpulanes/core/string_tensor.h"
#include "gpulanes/exec/executor.h"

namespace gpulanes {

std::vector<c10::IValue> Executor::run_requests(int index, std::span<const RequestPtr> requests) {
  for (const RequestPtr& r : requests) {
    for (const c10::Event& ready : r->inputs_ready) ready.synchronize();
  }
  return split_output(run(index, stack_inputs(requests)), requests.size(), /*copy_rows=*/true);
}

std::vector<c10::IValue> stack_inputs(std::span<const RequestPtr> requests) {
  std::vector<c10::IValue> out;
  if (requests.empty()) return out;
  const std::size_t arity = requests.front()->inputs.size();
  out.reserve(arity);
  std::vector<at::Tensor> column(requests.size());
  for (std::size_t k = 0; k < arity; ++k) {
    for (std::size_t i = 0; i < requests.size(); ++i) column[i] = requests[i]->inputs[k];
    out.emplace_back(is_string_tensor(column[0]) ? stack_strings(column) : at::stack(column, 0));
  }
  return out;
}

c10::IValue stack_strings(std::span<const at::Tensor> column) {
  c10::List<std::string> list;
  for (const at::Tensor& t : column) unpack_strings(t, list);
  return list;
}

namespace {

// A list of strings (a batched model's List[str] output) or of string lists (what an unbatched
// model's wrapper makes of one): row i is element i.
bool is_string_rows(const c10::IValue& v) {
  if (!v.isList()) return false;
  const c10::TypePtr element = v.toList().elementType();
  if (element->kind() == c10::TypeKind::StringType) return true;
  const auto list = element->cast<c10::ListType>();
  return list && list->getElementType()->kind() == c10::TypeKind::StringType;
}

c10::IValue slice_row(const c10::IValue& v, std::size_t n, std::int64_t row, bool copy) {
  if (is_string_rows(v)) {
    const c10::List<c10::IValue> rows = v.toList();
    if (rows.size() != n) {
      throw Error(ErrorCode::kModelError,
                  "model output is a list of " + std::to_string(rows.size()) +
                      " strings; it must hold one per request of the batch (" +
                      std::to_string(n) + ")");
    }
    return rows.get(static_cast<std::size_t>(row));
  }
  if (v.isTensor()) {
    const at::Tensor& t = v.toTensor();
    if (t.dim() == 0 || t.size(0) != static_cast<std::int64_t>(n)) {
      throw Error(ErrorCode::kModelError,
                  "model output tensor has shape " + c10::str(t.sizes()) +
                      "; its first dimension must be the batch size " + std::to_string(n));
    }
    return copy ? t.select(0, row).clone() : t.select(0, row);
  }
  if (v.isTuple()) {
    const auto& elems = v.toTupleRef().elements();
    std::vector<c10::IValue> parts;
    parts.reserve(elems.size());
    for (const auto& e : elems) parts.push_back(slice_row(e, n, row, copy));
    return c10::ivalue::Tuple::create(std::move(parts));
  }
  if (v.isTensorList()) {
    c10::List<at::Tensor> parts;
    for (const at::Tensor& t : v.toTensorVector()) parts.push_back(slice_row(t, n, row, copy).toTensor());
    return parts;
  }
  if (v.isList()) {
    auto parts = c10::impl::GenericList(v.toList().elementType());
    for (const auto& e : v.toList()) parts.push_back(slice_row(e, n, row, copy));
    return parts;
  }
  throw Error(ErrorCode::kModelError, "model output of type " + v.tagKind() +
                                          " is not supported; return a tensor, a tuple/list "
                                          "of tensors with the batch as first dimension, or a "
                                          "list of strings with one per request");
}

}  // namespace

std::vector<c10::IValue> split_output(const c10::IValue& output, std::size_t n, bool copy_rows) {
  std::vector<c10::IValue> out;
  out.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    out.push_back(slice_row(output, n, static_cast<std::int64_t>(i), copy_rows));
  }
  return out;
}

c10::IValue map_tensors(const c10::IValue& value,
                        const std::function<at::Tensor(const at::Tensor&)>& fn) {
  if (value.isTensor()) return fn(value.toTensor());
  if (value.isTuple()) {
    std::vector<c10::IValue> parts;
    for (const auto& e : value.toTupleRef().elements()) parts.push_back(map_tensors(e, fn));
    return c10::ivalue::Tuple::create(std::move(parts));
  }
  if (value.isTensorList()) {
    c10::List<at::Tensor> parts;
    for (const at::Tensor& t : value.toTensorVector()) parts.push_back(fn(t));
    return parts;
  }
  if (value.isList()) {
    auto parts = c10::impl::GenericList(value.toList().elementType());
    for (const auto& e : value.toList()) parts.push_back(map_tensors(e, fn));
    return parts;
  }
  return value;
}

}  // namespace gpulanes
