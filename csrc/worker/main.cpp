// gpulanes_worker: the process a process lane runs its batches in. No Python: LibTorch and the
// core's model loaders. It reads commands from the socket the lane gave it (kSocketFd), runs
// them one at a time, and exits when the lane says so, when the socket closes, or (by
// PR_SET_PDEATHSIG) when the lane's thread in the runtime's process goes away.
//
// With --device N it runs the models on GPU N, every copy and kernel on one stream of its own;
// the arena is pinned (cudaHostRegister) so the copies in and out are asynchronous. Under MPS
// the lane set CUDA_MPS_PIPE_DIRECTORY and CUDA_MPS_ACTIVE_THREAD_PERCENTAGE in its environment,
// which the CUDA driver reads when this process creates its context.
//
//   gpulanes_worker --parent PID --threads N [--spin-ns NS] [--library PATH]... [--device N]
#include <c10/core/InferenceMode.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/script.h>

#include <dlfcn.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "gpulanes/core/error.h"
#include "gpulanes/core/error_text.h"
#include "gpulanes/exec/worker_protocol.h"
#ifdef GPULANES_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif
#include "gpulanes/model/aoti_package.h"
#include "gpulanes/model/program.h"
#include "gpulanes/model/torchscript.h"

namespace gl = gpulanes;
namespace w = gpulanes::worker;

namespace {

w::Message reply_error(const std::string& what) {
  w::Message m;
  m.op = w::Op::kError;
  m.text = what.substr(0, 8000);
  return m;
}

bool in_arena(const w::Arena& arena, const at::Tensor& t) {
  const char* p = static_cast<const char*>(t.data_ptr());
  return p >= arena.data() && p < arena.data() + arena.size();
}

// What a process lane's outputs must be, and what they were (strings stay in thread lanes).
[[noreturn]] void not_tensors(const c10::IValue& v) {
  const bool strings = v.isString() || (v.isList() && v.toList().elementType()->kind() ==
                                                          c10::TypeKind::StringType);
  throw std::runtime_error(strings ? "the model returns strings, which process and MPS lanes do "
                                     "not carry (their worker sends tensors only): serve it on "
                                     "thread lanes"
                                   : "outputs must be a tensor or a tuple/list of tensors, got " +
                                         v.tagKind());
}

// The batch's outputs as flat tensors, and whether they were one tensor, a tuple or a list.
std::vector<at::Tensor> flatten(const c10::IValue& out, std::uint32_t* kind) {
  if (out.isTensor()) {
    *kind = w::kTensor;
    return {out.toTensor()};
  }
  std::vector<at::Tensor> flat;
  if (out.isTuple()) {
    *kind = w::kTuple;
    for (const c10::IValue& v : out.toTupleRef().elements()) {
      if (!v.isTensor()) not_tensors(v);
      flat.push_back(v.toTensor());
    }
    return flat;
  }
  if (out.isTensorList()) {
    *kind = w::kList;
    for (const at::Tensor& t : out.toTensorVector()) flat.push_back(t);
    return flat;
  }
  not_tensors(out);
}

// The arena's pages registered with CUDA (pinned) while a GPU worker maps them; registered
// again after every remap, and unregistered before it (a registration must not outlive its
// mapping).
class PinnedArena {
 public:
  PinnedArena(w::Arena& arena, bool gpu) : arena_(arena), gpu_(gpu) { pin(); }
  ~PinnedArena() { unpin(); }
  PinnedArena(const PinnedArena&) = delete;
  PinnedArena& operator=(const PinnedArena&) = delete;

  // The other side grew the arena to `bytes`.
  void follow(std::size_t bytes) {
    if (bytes <= arena_.size()) return;
    unpin();
    arena_.follow(bytes);
    pin();
  }
  // This side needs `bytes`.
  void reserve(std::size_t bytes) {
    if (bytes <= arena_.size()) return;
    unpin();
    arena_.reserve(bytes);
    pin();
  }

 private:
  void pin() {
#ifdef GPULANES_WITH_CUDA
    // Unpinned, the copies still work (synchronously): a failure here costs speed only.
    if (gpu_ && arena_.size() > 0 &&
        cudaHostRegister(arena_.data(), arena_.size(), cudaHostRegisterDefault) == cudaSuccess) {
      pinned_ = arena_.data();
    }
    (void)cudaGetLastError();
#endif
  }
  void unpin() {
#ifdef GPULANES_WITH_CUDA
    if (pinned_ != nullptr) cudaHostUnregister(pinned_);
    (void)cudaGetLastError();
#endif
    pinned_ = nullptr;
  }
  w::Arena& arena_;
  bool gpu_;                  // a GPU worker: pin; a CPU worker: nothing to do
  char* pinned_ = nullptr;    // the registered mapping, null when none
};

}  // namespace

int main(int argc, char** argv) {
  pid_t parent = 0;
  int threads = 1;
  long long spin_ns = 0;  // after a reply, poll this long for the next command before sleeping
  std::vector<std::string> libraries;  // custom operators, loaded before any model
  int device = -1;                     // the GPU it runs on; -1: the CPU
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--device") == 0) device = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--parent") == 0) parent = static_cast<pid_t>(std::atoi(argv[i + 1]));
    if (std::strcmp(argv[i], "--threads") == 0) threads = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--spin-ns") == 0) spin_ns = std::atoll(argv[i + 1]);
    if (std::strcmp(argv[i], "--library") == 0) libraries.emplace_back(argv[i + 1]);
  }
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (parent <= 0 || ::getppid() != parent) return 3;  // the parent is gone already
  if (threads > 0) at::set_num_threads(threads);
  c10::InferenceMode inference;
  w::Message hello;
  hello.op = w::Op::kOk;
  c10::Device where(c10::kCPU);
#ifdef GPULANES_WITH_CUDA
  std::optional<c10::cuda::CUDAStreamGuard> on_stream;  // every copy and kernel: one stream
  if (device >= 0) {
    try {
      where = c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(device));
      c10::cuda::set_device(where.index());
      on_stream.emplace(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, where.index()));
    } catch (const std::exception& e) {
      hello = reply_error("cannot use cuda:" + std::to_string(device) + ": " + gpulanes::error_text(e));
    }
  }
#else
  if (device >= 0) hello = reply_error("this gpulanes_worker was built without CUDA");
#endif
  w::Arena arena = w::Arena::adopt(w::kArenaFd);
  PinnedArena pinned(arena, where.is_cuda());
  std::map<int, std::unique_ptr<gl::ModelInstance>> models;
  for (const std::string& lib : hello.op == w::Op::kOk ? libraries : std::vector<std::string>{}) {
    // RTLD_GLOBAL: an operator library may depend on symbols of another one.
    if (::dlopen(lib.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr) {
      const char* why = ::dlerror();
      hello = reply_error("cannot load the library '" + lib + "': " + (why ? why : "unknown"));
      break;
    }
  }
  if (!w::send_message(w::kSocketFd, hello) || hello.op != w::Op::kOk) return 0;
  for (;;) {
    std::optional<w::Message> m;
    try {
      m = w::receive_message(w::kSocketFd, -1, nullptr, spin_ns);
    } catch (const std::exception&) {
      return 4;
    }
    if (!m || m->op == w::Op::kQuit) return 0;
    w::Message reply;
    reply.op = w::Op::kOk;
    try {
      pinned.follow(m->arena_size);
      if (m->op == w::Op::kLoad) {
        const std::uint32_t format = m->flags & ~w::kUnbatched;
        std::shared_ptr<const gl::ModelProgram> program =
            format == w::kAoti ? gl::load_aoti_package(m->text)
                               : gl::torchscript_program(gl::load_torchscript_bytes(
                                     std::string(arena.data(), m->blob)));
        if (m->flags & w::kUnbatched) program = gl::unbatched_program(std::move(program));
        models[m->model] = program->instantiate(where);
      } else if (m->op == w::Op::kRun) {
        auto it = models.find(m->model);
        if (it == models.end()) throw std::runtime_error("model not loaded in the worker");
        std::vector<at::Tensor> in = w::read_tensors(arena, m->tensors, /*copy=*/false);
        if (where.is_cuda()) {
          for (at::Tensor& t : in) t = t.to(where, /*non_blocking=*/true);  // pinned: async
        }
        std::vector<c10::IValue> args(in.begin(), in.end());
        std::uint32_t kind = w::kTensor;
        std::vector<at::Tensor> outs = flatten(it->second->forward(std::move(args), nullptr), &kind);
        const std::size_t start = w::end_of(m->tensors);
        std::size_t need = start + 64;
        for (const at::Tensor& t : outs) need += static_cast<std::size_t>(t.numel()) * t.element_size() + 64;
        if (need > arena.size()) {
          // Growing remaps the arena: an output that is a view of an input must move first.
          for (at::Tensor& t : outs) {
            if (in_arena(arena, t)) t = t.clone();
          }
          in.clear();
          args.clear();
          pinned.reserve(need);
        }
        // From the GPU: copied on this worker's stream, which the copy waits for.
        reply.tensors = w::write_tensors(arena, start, outs);
        reply.flags = kind;
      } else {
        throw std::runtime_error("unknown command " + std::to_string(static_cast<int>(m->op)));
      }
    } catch (const std::exception& e) {
      reply = reply_error(gpulanes::error_text(e, 4000));
    }
    reply.arena_size = arena.size();
    if (!w::send_message(w::kSocketFd, reply)) return 0;
  }
}
