#include "gpulanes/core/string_tensor.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>
#include <limits>

#include "gpulanes/core/error.h"

namespace gpulanes {
namespace {

constexpr std::size_t kLengthBytes = 4;

std::uint32_t read_length(const std::uint8_t* p) {
  return static_cast<std::uint32_t>(p[0]) | static_cast<std::uint32_t>(p[1]) << 8 |
         static_cast<std::uint32_t>(p[2]) << 16 | static_cast<std::uint32_t>(p[3]) << 24;
}

const std::uint8_t* bytes_of(const at::Tensor& t) {
  return static_cast<const std::uint8_t*>(t.const_data_ptr());
}

}  // namespace

at::Tensor pack_strings(std::span<const std::string_view> strings) {
  std::size_t size = 0;
  for (std::string_view s : strings) {
    if (s.size() > std::numeric_limits<std::uint32_t>::max()) {
      throw Error(ErrorCode::kInvalidInput, "a string input of " + std::to_string(s.size()) +
                                                " bytes is over the 4 GiB a string may hold");
    }
    size += kLengthBytes + s.size();
  }
  at::Tensor out = at::empty({static_cast<std::int64_t>(size)}, at::TensorOptions(kStringDtype));
  auto* p = static_cast<std::uint8_t*>(out.mutable_data_ptr());
  for (std::string_view s : strings) {
    const auto n = static_cast<std::uint32_t>(s.size());
    for (std::size_t b = 0; b < kLengthBytes; ++b) *p++ = static_cast<std::uint8_t>(n >> (8 * b));
    if (n) std::memcpy(p, s.data(), n);
    p += n;
  }
  return out;
}

std::size_t count_strings(const at::Tensor& t, const std::string& what) {
  if (!is_string_tensor(t) || t.dim() != 1 || !t.is_cpu() || !t.is_contiguous()) {
    throw Error(ErrorCode::kInvalidInput,
                what + " must be strings (str or bytes), got a tensor of dtype " +
                    std::string(t.defined() ? c10::toString(t.scalar_type()) : "undefined"));
  }
  const std::uint8_t* p = bytes_of(t);
  const auto size = static_cast<std::size_t>(t.numel());
  std::size_t at = 0, count = 0;
  while (at < size) {
    if (size - at < kLengthBytes) {
      throw Error(ErrorCode::kInvalidInput, what + ": a string's length is cut off (" +
                                                std::to_string(size - at) + " bytes left)");
    }
    const std::size_t n = read_length(p + at);
    at += kLengthBytes;
    if (n > size - at) {
      throw Error(ErrorCode::kInvalidInput,
                  what + ": string " + std::to_string(count) + " says it has " +
                      std::to_string(n) + " bytes, " + std::to_string(size - at) + " are left");
    }
    at += n;
    ++count;
  }
  return count;
}

void unpack_strings(const at::Tensor& t, c10::List<std::string>& out) {
  const std::uint8_t* p = bytes_of(t);
  const auto size = static_cast<std::size_t>(t.numel());
  for (std::size_t at = 0; at + kLengthBytes <= size;) {
    const std::size_t n = read_length(p + at);
    at += kLengthBytes;
    out.push_back(std::string(reinterpret_cast<const char*>(p + at), n));
    at += n;
  }
}

at::Tensor slice_strings(const at::Tensor& t, std::size_t first, std::size_t count) {
  const std::uint8_t* p = bytes_of(t);
  std::size_t begin = 0;
  for (std::size_t i = 0; i < first; ++i) begin += kLengthBytes + read_length(p + begin);
  std::size_t end = begin;
  for (std::size_t i = 0; i < count; ++i) end += kLengthBytes + read_length(p + end);
  return t.slice(0, static_cast<std::int64_t>(begin), static_cast<std::int64_t>(end));
}

}  // namespace gpulanes
