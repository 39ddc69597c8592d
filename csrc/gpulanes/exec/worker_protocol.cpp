#include "gpulanes/exec/worker_protocol.h"

#include <ATen/ATen.h>

#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <utility>

#include "gpulanes/core/error.h"

namespace gpulanes::worker {
namespace {

// Wire layout: Header, then `count` TensorMeta, then `text_len` bytes of text.
struct Header {
  std::uint32_t op;
  std::int32_t model;
  std::uint32_t flags;
  std::uint32_t count;
  std::uint64_t arena_size;
  std::uint64_t blob;
  std::uint64_t text_len;
};

constexpr std::size_t kMaxPacket = 1 << 20;  // well above any message: 16 tensors + a path

[[noreturn]] void malformed(const std::string& why) {
  throw Error(ErrorCode::kModelError, "malformed message from the worker process: " + why);
}

std::size_t align64(std::size_t n) { return (n + 63) & ~std::size_t{63}; }

std::size_t next_pow2(std::size_t n) {
  std::size_t p = 1 << 16;
  while (p < n) p <<= 1;
  return p;
}

}  // namespace

bool send_message(int fd, const Message& m) {
  Header h{static_cast<std::uint32_t>(m.op), m.model, m.flags,
           static_cast<std::uint32_t>(m.tensors.size()), m.arena_size, m.blob, m.text.size()};
  std::vector<char> buf(sizeof h + m.tensors.size() * sizeof(TensorMeta) + m.text.size());
  std::memcpy(buf.data(), &h, sizeof h);
  if (!m.tensors.empty()) {
    std::memcpy(buf.data() + sizeof h, m.tensors.data(), m.tensors.size() * sizeof(TensorMeta));
  }
  std::memcpy(buf.data() + sizeof h + m.tensors.size() * sizeof(TensorMeta), m.text.data(),
              m.text.size());
  for (;;) {
    const ssize_t n = ::send(fd, buf.data(), buf.size(), MSG_NOSIGNAL);
    if (n == static_cast<ssize_t>(buf.size())) return true;
    if (n < 0 && errno == EINTR) continue;
    return false;
  }
}

std::optional<Message> receive_message(int fd, int timeout_ms, bool* timed_out,
                                       std::int64_t spin_ns) {
  if (timed_out) *timed_out = false;
  pollfd p{fd, POLLIN, 0};
  bool ready = false;
  if (spin_ns > 0) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::nanoseconds(spin_ns);
    do {
      ready = ::poll(&p, 1, 0) > 0;
    } while (!ready && std::chrono::steady_clock::now() < until);
  }
  while (!ready) {
    const int r = ::poll(&p, 1, timeout_ms);
    if (r > 0) break;
    if (r == 0) {
      if (timed_out) *timed_out = true;
      return std::nullopt;
    }
    if (errno != EINTR) return std::nullopt;
  }
  // One buffer per thread, allocated once: a fresh megabyte per message cost more than the
  // rest of the hop.
  thread_local std::vector<char> buf(kMaxPacket);
  ssize_t n;
  do {
    n = ::recv(fd, buf.data(), buf.size(), 0);
  } while (n < 0 && errno == EINTR);
  if (n <= 0) return std::nullopt;  // end of file: the peer is gone
  if (static_cast<std::size_t>(n) < sizeof(Header)) malformed("short header");
  Header h;
  std::memcpy(&h, buf.data(), sizeof h);
  const std::size_t want = sizeof h + std::size_t{h.count} * sizeof(TensorMeta) + h.text_len;
  if (h.count > 4096 || h.text_len > kMaxPacket || want != static_cast<std::size_t>(n)) {
    malformed("sizes disagree");
  }
  Message m;
  m.op = static_cast<Op>(h.op);
  m.model = h.model;
  m.flags = h.flags;
  m.arena_size = h.arena_size;
  m.blob = h.blob;
  m.tensors.resize(h.count);
  if (h.count) std::memcpy(m.tensors.data(), buf.data() + sizeof h, h.count * sizeof(TensorMeta));
  m.text.assign(buf.data() + sizeof h + h.count * sizeof(TensorMeta), h.text_len);
  return m;
}

Arena Arena::create(std::size_t bytes) {
  Arena a;
  a.fd_ = ::memfd_create("gpulanes-lane", MFD_CLOEXEC);
  if (a.fd_ < 0) {
    throw Error(ErrorCode::kModelError,
                std::string("cannot create a shared memory arena: ") + std::strerror(errno));
  }
  a.reserve(bytes);
  return a;
}

Arena Arena::adopt(int fd) {
  Arena a;
  a.fd_ = fd;
  const off_t size = ::lseek(fd, 0, SEEK_END);
  if (size > 0) a.map(static_cast<std::size_t>(size));
  return a;
}

Arena::Arena(Arena&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

Arena& Arena::operator=(Arena&& other) noexcept {
  if (this != &other) {
    this->~Arena();
    fd_ = std::exchange(other.fd_, -1);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

Arena::~Arena() {
  if (data_) ::munmap(data_, size_);
  if (fd_ >= 0) ::close(fd_);
  data_ = nullptr;
  fd_ = -1;
}

void Arena::map(std::size_t bytes) {
  if (data_) ::munmap(data_, size_);
  data_ = nullptr;
  size_ = 0;
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
  if (p == MAP_FAILED) {
    throw Error(ErrorCode::kModelError,
                std::string("cannot map the shared memory arena: ") + std::strerror(errno));
  }
  data_ = static_cast<char*>(p);
  size_ = bytes;
}

void Arena::reserve(std::size_t bytes) {
  if (bytes <= size_) return;
  const std::size_t grown = next_pow2(bytes);
  const off_t current = ::lseek(fd_, 0, SEEK_END);
  if (current < static_cast<off_t>(grown) && ::ftruncate(fd_, static_cast<off_t>(grown)) != 0) {
    throw Error(ErrorCode::kModelError, "cannot grow the shared memory arena to " +
                                            std::to_string(grown) + " bytes: " + std::strerror(errno));
  }
  map(grown);
}

void Arena::follow(std::size_t bytes) {
  if (bytes > size_) map(bytes);
}

std::vector<TensorMeta> place_tensors(Arena& arena, std::size_t start,
                                      const std::vector<TensorShape>& shapes) {
  std::vector<TensorMeta> metas;
  std::size_t at = align64(start);
  for (const auto& [sizes, dtype] : shapes) {
    if (sizes.size() > static_cast<std::size_t>(kMaxDims)) {
      throw Error(ErrorCode::kModelError, "a tensor of " + std::to_string(sizes.size()) +
                                              " dimensions (process lanes take at most " +
                                              std::to_string(kMaxDims) + ")");
    }
    TensorMeta m;
    m.dtype = static_cast<std::int32_t>(dtype);
    m.ndim = static_cast<std::int32_t>(sizes.size());
    std::uint64_t numel = 1;
    for (std::size_t d = 0; d < sizes.size(); ++d) {
      m.sizes[d] = sizes[d];
      numel *= static_cast<std::uint64_t>(sizes[d]);
    }
    m.nbytes = numel * c10::elementSize(dtype);
    m.offset = at;
    metas.push_back(m);
    at = align64(at + m.nbytes);
  }
  arena.reserve(at);
  return metas;
}

std::vector<TensorMeta> write_tensors(Arena& arena, std::size_t start,
                                      const std::vector<at::Tensor>& tensors) {
  std::vector<TensorShape> shapes;
  for (const at::Tensor& t : tensors) shapes.emplace_back(t.sizes().vec(), t.scalar_type());
  std::vector<TensorMeta> metas = place_tensors(arena, start, shapes);
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const TensorMeta& m = metas[i];
    if (m.nbytes == 0) continue;
    at::Tensor dst = at::from_blob(arena.data() + m.offset, tensors[i].sizes(),
                                   tensors[i].options().device(at::kCPU));
    dst.copy_(tensors[i]);  // contiguous in the arena, from any layout or device
  }
  return metas;
}

std::vector<at::Tensor> read_tensors(const Arena& arena, const std::vector<TensorMeta>& metas,
                                     bool copy) {
  std::vector<at::Tensor> out;
  out.reserve(metas.size());
  for (const TensorMeta& m : metas) {
    if (m.ndim < 0 || m.ndim > kMaxDims || m.offset + m.nbytes > arena.size() ||
        m.dtype < 0 || m.dtype >= static_cast<int>(c10::ScalarType::NumOptions)) {
      malformed("a tensor outside the arena");
    }
    std::vector<std::int64_t> sizes(m.sizes, m.sizes + m.ndim);
    const auto options = at::TensorOptions().dtype(static_cast<c10::ScalarType>(m.dtype));
    at::Tensor t = at::from_blob(arena.data() + m.offset, sizes, options);
    if (static_cast<std::uint64_t>(t.numel()) * t.element_size() != m.nbytes) {
      malformed("a tensor's size disagrees with its shape");
    }
    out.push_back(copy ? t.clone() : t);
  }
  return out;
}

std::size_t end_of(const std::vector<TensorMeta>& metas) {
  std::size_t end = 0;
  for (const TensorMeta& m : metas) end = std::max<std::size_t>(end, m.offset + m.nbytes);
  return end;
}

}  // namespace gpulanes::worker
