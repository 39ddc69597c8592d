// How a string input travels through the core. A request's inputs are tensors (the queue,
// the lanes and the stacking code all move tensors), so a string input is carried as a
// "string tensor": a 1-D tensor of dtype Bits8 on the CPU holding its strings in the form
// KServe v2 gives BYTES tensors (for each string, its length as 4 bytes little-endian, then its
// bytes). Bits8 is a dtype no model takes as input, so a carrier cannot be mistaken for a
// tensor input and stacking tells it from one without the model's spec. Stacking turns the
// carriers of a batch into the List[str] a TorchScript forward() takes.
//
// The strings are bytes, not necessarily UTF-8 (KServe's BYTES). Any thread may call these.
#pragma once

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>

#include <cstddef>
#include <span>
#include <string>
#include <string_view>

namespace gpulanes {

inline constexpr c10::ScalarType kStringDtype = c10::ScalarType::Bits8;

inline bool is_string_tensor(const at::Tensor& t) {
  return t.defined() && t.scalar_type() == kStringDtype;
}

// A new carrier holding `strings`, in order.
at::Tensor pack_strings(std::span<const std::string_view> strings);

// How many strings a carrier holds. Throws Error(kInvalidInput), naming `what`, when it is not
// a contiguous 1-D Bits8 CPU tensor or its lengths do not add up to its size exactly (a length
// past the end, or bytes left over).
std::size_t count_strings(const at::Tensor& t, const std::string& what);

// Appends a carrier's strings to `out`. The carrier must have passed count_strings.
void unpack_strings(const at::Tensor& t, c10::List<std::string>& out);

// Strings [first, first + count) of a carrier that passed count_strings, as a carrier of their
// own (a view: it shares the carrier's memory).
at::Tensor slice_strings(const at::Tensor& t, std::size_t first, std::size_t count);

}  // namespace gpulanes
