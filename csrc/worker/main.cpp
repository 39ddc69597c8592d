// gpulanes_worker: the process a process lane runs its batches in. No Python: LibTorch and the
// core's model loaders. It reads commands from the socket the lane gave it (kSocketFd), runs
// them one at a time, and exits when the lane says so, when the socket closes, or (by
// PR_SET_PDEATHSIG) when the lane's thread in the runtime's process goes away.
//
//   gpulanes_worker --parent PID --threads N [--spin-ns NS]
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
#include <string>
#include <vector>

#include "gpulanes/exec/worker_protocol.h"
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
      if (!v.isTensor()) throw std::runtime_error("outputs must be a tensor or a tuple/list of tensors");
      flat.push_back(v.toTensor());
    }
    return flat;
  }
  if (out.isTensorList()) {
    *kind = w::kList;
    for (const at::Tensor& t : out.toTensorVector()) flat.push_back(t);
    return flat;
  }
  throw std::runtime_error("outputs must be a tensor or a tuple/list of tensors, got " +
                           out.tagKind());
}

}  // namespace

int main(int argc, char** argv) {
  pid_t parent = 0;
  int threads = 1;
  long long spin_ns = 0;  // after a reply, poll this long for the next command before sleeping
  std::vector<std::string> libraries;  // custom operators, loaded before any model
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--parent") == 0) parent = static_cast<pid_t>(std::atoi(argv[i + 1]));
    if (std::strcmp(argv[i], "--threads") == 0) threads = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--spin-ns") == 0) spin_ns = std::atoll(argv[i + 1]);
    if (std::strcmp(argv[i], "--library") == 0) libraries.emplace_back(argv[i + 1]);
  }
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (parent <= 0 || ::getppid() != parent) return 3;  // the parent is gone already
  if (threads > 0) at::set_num_threads(threads);
  c10::InferenceMode inference;
  w::Arena arena = w::Arena::adopt(w::kArenaFd);
  std::map<int, std::unique_ptr<gl::ModelInstance>> models;
  w::Message hello;
  hello.op = w::Op::kOk;
  for (const std::string& lib : libraries) {
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
      arena.follow(m->arena_size);
      if (m->op == w::Op::kLoad) {
        std::shared_ptr<const gl::ModelProgram> program =
            m->flags == w::kAoti ? gl::load_aoti_package(m->text)
                                 : gl::torchscript_program(gl::load_torchscript_bytes(
                                       std::string(arena.data(), m->blob)));
        models[m->model] = program->instantiate(c10::Device(c10::kCPU));
      } else if (m->op == w::Op::kRun) {
        auto it = models.find(m->model);
        if (it == models.end()) throw std::runtime_error("model not loaded in the worker");
        std::vector<at::Tensor> in = w::read_tensors(arena, m->tensors, /*copy=*/false);
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
        }
        reply.tensors = w::write_tensors(arena, start, outs);
        reply.flags = kind;
      } else {
        throw std::runtime_error("unknown command " + std::to_string(static_cast<int>(m->op)));
      }
    } catch (const std::exception& e) {
      reply = reply_error(e.what());
    }
    reply.arena_size = arena.size();
    if (!w::send_message(w::kSocketFd, reply)) return 0;
  }
}
