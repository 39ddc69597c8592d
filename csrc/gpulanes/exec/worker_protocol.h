// How a process lane talks to its worker process (gpulanes_worker): messages over a
// SOCK_SEQPACKET socketpair (one message per packet, so no framing) and tensors in a shared
// memory arena both processes map (a memfd: anonymous, gone when both close it, so nothing is
// left in /dev/shm whatever happens to either process).
//
// The lane (parent) sends kLoad once per model and kRun once per batch, and waits for the reply
// (kOk or kError) before it sends anything else: one message in flight, so neither side needs a
// lock. A batch's inputs are written at the start of the arena, its outputs after them; either
// side may grow the arena (ftruncate) and says its size in every message, and the other side
// remaps when it sees a larger one.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace gpulanes::worker {

enum class Op : std::uint32_t {
  kLoad = 1,   // model = index, flags = Format, text = package path, blob = TorchScript bytes
  kRun = 2,    // model = index, tensors = the stacked inputs in the arena
  kQuit = 3,   // finish and exit 0
  kOk = 100,   // reply; for kRun: tensors = outputs, flags = OutputKind
  kError = 101,  // reply; text = what failed (the model raised, or a load failed)
};

enum Format : std::uint32_t { kTorchScript = 0, kAoti = 1 };
// Or'ed into kLoad's flags: the model has no batch dimension (unbatched_program).
inline constexpr std::uint32_t kUnbatched = 1u << 8;
enum OutputKind : std::uint32_t { kTensor = 0, kTuple = 1, kList = 2 };

inline constexpr int kMaxDims = 8;          // tensors of higher rank are refused
inline constexpr int kSocketFd = 3;         // where the worker finds its end of the socketpair
inline constexpr int kArenaFd = 4;          // ... and the arena's memfd

struct TensorMeta {
  std::int32_t dtype = 0;                   // c10::ScalarType
  std::int32_t ndim = 0;
  std::int64_t sizes[kMaxDims] = {};
  std::uint64_t offset = 0;                 // in the arena
  std::uint64_t nbytes = 0;
};

struct Message {
  Op op = Op::kQuit;
  std::int32_t model = -1;
  std::uint32_t flags = 0;
  std::uint64_t arena_size = 0;             // the sender's arena size (the other side remaps)
  std::uint64_t blob = 0;                   // bytes at the arena's start that belong to it
  std::vector<TensorMeta> tensors;
  std::string text;
};

// Sends one message; false when the peer is gone (never raises SIGPIPE).
bool send_message(int fd, const Message& m);
// Waits up to timeout_ms (-1: forever) for one message, polling for the first `spin_ns`
// without sleeping: a reply or command that comes within it costs no wake-up of a sleeping
// thread, which is most of a small batch's hop between the processes. nullopt on end of file
// or a broken socket; *timed_out says whether it was the timeout instead. Throws
// Error(kModelError) for a malformed message.
std::optional<Message> receive_message(int fd, int timeout_ms, bool* timed_out = nullptr,
                                       std::int64_t spin_ns = 0);

// The shared memory both sides map. Not thread-safe: one lane thread, or the worker's one thread.
class Arena {
 public:
  // A new memfd of `bytes` (parent side).
  static Arena create(std::size_t bytes);
  // Maps an inherited memfd (worker side).
  static Arena adopt(int fd);
  Arena() = default;
  Arena(Arena&& other) noexcept;
  Arena& operator=(Arena&& other) noexcept;
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  ~Arena();

  // Grows the memfd to at least `bytes` (to the next power of two) and remaps.
  void reserve(std::size_t bytes);
  // Remaps after the other side grew it to `bytes`.
  void follow(std::size_t bytes);
  char* data() const { return data_; }
  std::size_t size() const { return size_; }
  int fd() const { return fd_; }

 private:
  void map(std::size_t bytes);
  int fd_ = -1;             // the memfd (owned)
  char* data_ = nullptr;    // its mapping
  std::size_t size_ = 0;    // mapped bytes
};

// Sizes and dtype of a tensor to place in the arena.
using TensorShape = std::pair<std::vector<std::int64_t>, c10::ScalarType>;
// Places contiguous tensors of `shapes` in the arena from byte `start` (64-byte aligned),
// growing it as needed, and returns where each goes; writes nothing. Throws Error(kModelError)
// for a tensor of more than kMaxDims dimensions.
std::vector<TensorMeta> place_tensors(Arena& arena, std::size_t start,
                                      const std::vector<TensorShape>& shapes);
// place_tensors() for `tensors`, and contiguous CPU copies of them written there.
std::vector<TensorMeta> write_tensors(Arena& arena, std::size_t start,
                                      const std::vector<at::Tensor>& tensors);
// The tensors `metas` describe: views of the arena (valid until it is written again or
// remapped), or copies with memory of their own.
std::vector<at::Tensor> read_tensors(const Arena& arena, const std::vector<TensorMeta>& metas,
                                     bool copy);
// First byte after the tensors `metas` describe.
std::size_t end_of(const std::vector<TensorMeta>& metas);

}  // namespace gpulanes::worker
