// A process lane's executor: the lane's worker thread stays in the runtime's process and hands
// each batch to a worker process (gpulanes_worker, LibTorch, no Python) through shared memory
// (worker_protocol.h). On a GPU the worker runs the models there (pinning the arena, so its
// copies to and from the device are asynchronous); an MPS lane's worker is a client of the MPS
// daemon with the lane's share of the SMs as its active-thread percentage. The worker dying (a signal, abort, the out-of-memory killer) or hanging
// past the watchdog costs the batch it was running: run() throws WorkerLost naming what
// happened, and the next run() starts a new worker, loads the lane's models into it and goes
// on. A worker that died while idle is noticed before the next batch is sent, which then runs
// on a new worker: no batch is lost with it. Restarts back off (50 ms doubling, at most 1 s); after max_restarts deaths in a row the
// lane gives up and fails its batches at once (broken()) for a cool-down (retry_after_ns,
// doubling each time it gives up again), then tries one more worker.
//
// Threads: the lane's worker thread calls load() and run() (the thread starting the lane before
// it); worker_pid(), worker_restarts() and broken() may be read from any thread. The worker is
// spawned by the lane's thread, and dies with it (PR_SET_PDEATHSIG in the worker).
#include <c10/core/InferenceMode.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <map>
#include <thread>

#include "gpulanes/core/string_tensor.h"
#include "gpulanes/exec/batching.h"
#include "gpulanes/exec/executor.h"
#include "gpulanes/exec/mps.h"
#include "gpulanes/exec/worker_protocol.h"
#include "gpulanes/model/program.h"

extern char** environ;

namespace gpulanes {
namespace {

using worker::Message;
using worker::Op;
using worker::TensorMeta;

std::int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string signal_name(int sig) {
  switch (sig) {
    case SIGKILL: return "SIGKILL";
    case SIGABRT: return "SIGABRT";
    case SIGSEGV: return "SIGSEGV";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGILL: return "SIGILL";
    case SIGTERM: return "SIGTERM";
    default: return "signal " + std::to_string(sig);
  }
}

// A descriptor above the standard ones, close-on-exec: posix_spawn's dup2 onto kSocketFd and
// kArenaFd then never reads a descriptor the other dup2 has just replaced.
int high_dup(int fd) {
  const int out = ::fcntl(fd, F_DUPFD_CLOEXEC, 10);
  if (out < 0) throw Error(ErrorCode::kModelError, std::string("dup: ") + std::strerror(errno));
  return out;
}

class ProcessExecutor final : public Executor {
 public:
  explicit ProcessExecutor(ProcessOptions options) : options_(std::move(options)) {
    if (::access(options_.worker_path.c_str(), X_OK) != 0) {
      throw Error(ErrorCode::kInvalidInput,
                  "isolation='process' needs the gpulanes_worker executable, not found at '" +
                      options_.worker_path + "' (it is installed beside gpulanes/_C; "
                      "GPULANES_WORKER names another)");
    }
  }
  ~ProcessExecutor() override { stop_worker(); }
  ProcessExecutor(const ProcessExecutor&) = delete;
  ProcessExecutor& operator=(const ProcessExecutor&) = delete;

  std::string device() const override {
    return options_.device < 0 ? "cpu" : "cuda:" + std::to_string(options_.device);
  }

  void load(int index, const ModelProgram& program) override {
    sources_.insert_or_assign(index, program.source());
    if (pid_.load() > 0) {
      load_one(index);
    } else {
      ensure_worker();  // starts one, which loads every model of the lane, this one too
    }
    loads_.fetch_add(1, std::memory_order_relaxed);
  }

  c10::IValue run(int index, std::vector<c10::IValue> inputs) override {
    std::vector<at::Tensor> tensors;
    tensors.reserve(inputs.size());
    for (const c10::IValue& in : inputs) {
      if (!in.isTensor()) refuse_strings();
      tensors.push_back(in.toTensor());
    }
    ensure_worker();
    return run_written(index, worker::write_tensors(arena_, 0, tensors), /*copy=*/true);
  }

  // Served batches skip the stacked copy: each request's sample goes straight to its row in
  // the arena, and the rows handed out are copied out of it once (split_output).
  std::vector<c10::IValue> run_requests(int index, std::span<const RequestPtr> requests) override {
    ensure_worker();
    for (const RequestPtr& r : requests) {
      for (const c10::Event& ready : r->inputs_ready) ready.synchronize();  // GPU inputs
    }
    const auto n = static_cast<std::int64_t>(requests.size());
    std::vector<worker::TensorShape> shapes;
    for (const at::Tensor& t : requests.front()->inputs) {
      if (is_string_tensor(t)) refuse_strings();
      std::vector<std::int64_t> sizes{n};
      sizes.insert(sizes.end(), t.sizes().begin(), t.sizes().end());
      shapes.emplace_back(std::move(sizes), t.scalar_type());
    }
    std::vector<TensorMeta> metas = worker::place_tensors(arena_, 0, shapes);
    std::vector<at::Tensor> columns = worker::read_tensors(arena_, metas, /*copy=*/false);
    for (std::size_t k = 0; k < columns.size(); ++k) {
      for (std::int64_t i = 0; i < n; ++i) columns[k].select(0, i).copy_(requests[i]->inputs[k]);
    }
    columns.clear();
    std::vector<c10::IValue> rows = split_output(run_written(index, std::move(metas), /*copy=*/false),
                                                 static_cast<std::size_t>(n), /*copy_rows=*/true);
    // Rows kept on the GPU were copied on this thread's current stream: complete, and kept
    // from reuse while their submitters' streams read them, before they are handed out.
    if (options_.outputs_on_device) hand_out_on_device(rows, requests, options_.device);
    return rows;
  }

  // The worker protocol moves tensors through shared memory, not TorchScript's strings; a
  // model that takes them fails its warm-up here, so no lane of this kind ever serves it.
  [[noreturn]] static void refuse_strings() {
    throw Error(ErrorCode::kInvalidInput,
                "the model takes strings, which process and MPS lanes do not carry (their "
                "worker process gets tensors only): serve it on thread lanes");
  }

  void close() override { stop_worker(); }
  int worker_pid() const override { return pid_.load(); }
  int worker_restarts() const override { return restarts_.load(); }
  // Broken until its cool-down ends; then the event loop hands it batches again and the next
  // one tries a new worker.
  bool broken() const override { return broken_.load() && steady_ns() < retry_at_ns_.load(); }
  int mps_thread_percentage() const override { return options_.mps ? options_.thread_percentage : 0; }
  std::string mps_pipe_dir() const override { return options_.mps ? options_.mps->pipe_dir() : ""; }

 private:
  // Runs model `index` on the inputs `metas` describe in the arena. Its outputs are copies, or
  // without `copy` views of the arena, valid until the next batch.
  c10::IValue run_written(int index, std::vector<TensorMeta> metas, bool copy) {
    Message m;
    m.op = Op::kRun;
    m.model = index;
    const std::int64_t rows = metas.empty() || metas[0].ndim == 0 ? 0 : metas[0].sizes[0];
    m.tensors = std::move(metas);
    m.arena_size = arena_.size();
    const Message reply = exchange(m, "running a batch of " + std::to_string(rows));
    if (reply.op != Op::kOk) throw Error(ErrorCode::kModelError, reply.text);
    deaths_in_a_row_ = 0;
    arena_.follow(reply.arena_size);
    std::vector<at::Tensor> outs =
        worker::read_tensors(arena_, reply.tensors, copy && !options_.outputs_on_device);
    if (options_.outputs_on_device) {
      const c10::Device to(c10::kCUDA, static_cast<c10::DeviceIndex>(options_.device));
      for (at::Tensor& t : outs) t = t.to(to);
    }
    if (reply.flags == worker::kTensor && outs.size() == 1) return outs[0];
    if (reply.flags == worker::kList) {
      c10::List<at::Tensor> list;
      for (at::Tensor& t : outs) list.push_back(std::move(t));
      return list;
    }
    return c10::ivalue::Tuple::create(std::vector<c10::IValue>(outs.begin(), outs.end()));
  }

  void ensure_worker() {
    if (pid_.load() > 0 && !died_idle()) return;
    if (broken_.load()) {
      if (steady_ns() < retry_at_ns_.load()) {
        throw WorkerLost("this lane's worker process died " + std::to_string(deaths_in_a_row_) +
                         " times in a row (last: " + last_death_ + "); the lane runs nothing "
                         "more until its cool-down ends");
      }
      // The cool-down is over: one more worker, and one more death gives up again, for twice
      // as long (at most 10 minutes).
      broken_.store(false);
      deaths_in_a_row_ = options_.max_restarts;
    }
    if (deaths_in_a_row_ > options_.max_restarts) {
      retry_at_ns_.store(steady_ns() + cooldown_ns_);
      cooldown_ns_ = std::min<DurationNs>(2 * cooldown_ns_, 600'000'000'000);
      broken_.store(true);
      ensure_worker();  // throws the message above
    }
    if (deaths_in_a_row_ > 0) {
      const int ms = std::min(1000, 50 << std::min(deaths_in_a_row_ - 1, 5));
      std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    }
    spawn();
    if (started_) restarts_.fetch_add(1);
    started_ = true;
    for (const auto& [index, source] : sources_) load_one(index);
  }

  // Whether the worker died (or was killed) while it ran nothing: its end of the socket hung
  // up. It is collected and counted as a death; no batch was lost with it.
  bool died_idle() {
    pollfd p{sock_, POLLIN, 0};
    if (::poll(&p, 1, 0) <= 0) return false;  // quiet: alive (a reply is never unasked for)
    const int status = reap();
    ++deaths_in_a_row_;
    last_death_ = WIFSIGNALED(status) ? "killed by " + signal_name(WTERMSIG(status)) + " while idle"
                                      : "gone while idle";
    return true;
  }

  void spawn() {
    if (arena_.fd() < 0) arena_ = worker::Arena::create(1 << 20);
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
      throw Error(ErrorCode::kModelError, std::string("socketpair: ") + std::strerror(errno));
    }
    const int child_sock = high_dup(sv[1]);
    const int child_arena = high_dup(arena_.fd());
    ::close(sv[1]);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, child_sock, worker::kSocketFd);
    posix_spawn_file_actions_adddup2(&actions, child_arena, worker::kArenaFd);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
    posix_spawn_file_actions_addclosefrom_np(&actions, worker::kArenaFd + 1);
#endif
    const std::string parent = std::to_string(::getpid());
    const std::string threads =
        std::to_string(options_.threads > 0 ? options_.threads : at::get_num_threads());
    std::vector<std::string> args = {options_.worker_path, "--parent", parent, "--threads", threads,
                                     "--spin-ns", std::to_string(options_.spin_ns)};
    if (options_.device >= 0) {
      args.push_back("--device");
      args.push_back(std::to_string(options_.device));
    }
    for (const std::string& lib : options_.libraries) {
      args.push_back("--library");
      args.push_back(lib);
    }
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    // An MPS lane's worker finds the daemon and its share in its environment.
    std::vector<std::string> env;
    if (options_.mps) {
      std::vector<std::pair<std::string, std::string>> set{
          {"CUDA_MPS_PIPE_DIRECTORY", options_.mps->pipe_dir()}};
      if (options_.thread_percentage > 0) {
        set.emplace_back("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", std::to_string(options_.thread_percentage));
      }
      env = environment_with(set);
    }
    std::vector<char*> envp;
    for (std::string& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    pid_t pid = 0;
    const int rc = ::posix_spawn(&pid, options_.worker_path.c_str(), &actions, nullptr,
                                 argv.data(), options_.mps ? envp.data() : environ);
    posix_spawn_file_actions_destroy(&actions);
    ::close(child_sock);
    ::close(child_arena);
    if (rc != 0) {
      ::close(sv[0]);
      ++deaths_in_a_row_;
      throw WorkerLost("cannot start the worker process '" + options_.worker_path +
                       "': " + std::strerror(rc));
    }
    sock_ = sv[0];
    pid_.store(pid);
    bool timed_out = false;
    auto hello = worker::receive_message(sock_, to_ms(options_.start_timeout_ns), &timed_out);
    if (hello && hello->op == Op::kError) {  // it could not load a library: no use retrying
      reap();
      ++deaths_in_a_row_;
      retry_at_ns_.store(INT64_MAX);  // a library that does not load will not load later
      broken_.store(true);
      last_death_ = hello->text;
      throw Error(ErrorCode::kModelError, "the lane's worker process could not start: " + hello->text);
    }
    if (!hello || hello->op != Op::kOk) {
      lost("starting", timed_out,
           "was not ready within " + seconds(options_.start_timeout_ns) +
               " s (worker_options start_timeout_s) and was killed" +
               (options_.mps ? "; an MPS client that cannot reach its daemon (" +
                                   options_.mps->pipe_dir() + ") hangs in CUDA's start"
                             : std::string()));
    }
  }

  void load_one(int index) {
    const ProgramSource& src = sources_.at(index);
    Message m;
    m.op = Op::kLoad;
    m.model = index;
    if (src.format == "aoti") {
      m.flags = worker::kAoti;
      m.text = src.path;
    } else {
      m.flags = worker::kTorchScript;
      arena_.reserve(src.bytes.size());
      std::memcpy(arena_.data(), src.bytes.data(), src.bytes.size());
      m.blob = src.bytes.size();
    }
    if (src.unbatched) m.flags |= worker::kUnbatched;
    m.arena_size = arena_.size();
    const Message reply = exchange(m, "loading model " + std::to_string(index));
    if (reply.op != Op::kOk) throw Error(ErrorCode::kModelError, reply.text);
  }

  // Sends `m` and waits for the reply; the worker dying or exceeding the watchdog is lost().
  Message exchange(const Message& m, const std::string& doing) {
    if (!worker::send_message(sock_, m)) lost(doing, false);
    bool timed_out = false;
    std::optional<Message> reply =
        worker::receive_message(sock_, watchdog_ms(), &timed_out, options_.spin_ns);
    if (!reply) lost(doing, timed_out);
    return std::move(*reply);
  }

  static int to_ms(DurationNs ns) {
    return static_cast<int>(std::clamp<std::int64_t>(ns / 1'000'000, 1, INT32_MAX));
  }
  int watchdog_ms() const { return to_ms(options_.watchdog_ns); }

  static std::string seconds(DurationNs ns) { return std::to_string(to_ms(ns) / 1000.0).substr(0, 6); }

  // The worker is gone (it died, or it timed out and is killed now): throws WorkerLost saying
  // what happened while `doing`; `stuck` says what a time-out means (default: the watchdog's).
  [[noreturn]] void lost(const std::string& doing, bool timed_out, std::string stuck = "") {
    const int pid = pid_.load();
    if (timed_out) ::kill(pid, SIGKILL);
    const int status = reap();
    ++deaths_in_a_row_;
    std::string what;
    if (timed_out) {
      what = stuck.empty() ? "was stuck for more than " + seconds(options_.watchdog_ns) +
                                 " s (the watchdog) and was killed"
                           : std::move(stuck);
    } else if (WIFSIGNALED(status)) {
      what = "was killed by " + signal_name(WTERMSIG(status));
    } else if (WIFEXITED(status)) {
      what = "exited with status " + std::to_string(WEXITSTATUS(status));
      // 127 before its hello is the dynamic loader refusing it (its message is on stderr).
      if (WEXITSTATUS(status) == 127 && doing == "starting") {
        what += " (the dynamic loader could not load " + options_.worker_path +
                ": a library it needs is missing; `ldd` on it shows which)";
      }
    } else {
      what = "was lost";
    }
    last_death_ = what;
    throw WorkerLost("the lane's worker process (pid " + std::to_string(pid) + ") " + what +
                     " while " + doing + "; the lane starts a new one");
  }

  // Closes the socket and collects the worker (SIGKILL when it has not exited within a second).
  int reap() {
    const int pid = pid_.exchange(0);
    if (sock_ >= 0) ::close(sock_);
    sock_ = -1;
    if (pid <= 0) return 0;
    int status = 0;
    for (int i = 0; i < 1000; ++i) {
      const pid_t r = ::waitpid(pid, &status, WNOHANG);
      if (r == pid || (r < 0 && errno != EINTR)) return status;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ::kill(pid, SIGKILL);
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return status;
  }

  void stop_worker() {
    if (pid_.load() <= 0) return;
    Message quit;
    quit.op = Op::kQuit;
    worker::send_message(sock_, quit);
    reap();
  }

  const ProcessOptions options_;
  std::map<int, ProgramSource> sources_;  // model index -> what the worker loads it from
  worker::Arena arena_;                   // inputs and outputs of the batch in flight
  int sock_ = -1;                         // our end of the socketpair
  std::atomic<int> pid_{0};               // the worker's pid, 0 when none runs
  std::atomic<int> restarts_{0};          // workers started after the first
  std::atomic<bool> broken_{false};       // gave up after max_restarts deaths in a row
  std::atomic<std::int64_t> retry_at_ns_{0};  // ...until then (steady clock ns)
  DurationNs cooldown_ns_ = options_.retry_after_ns;  // the next give-up's cool-down
  int deaths_in_a_row_ = 0;               // since the last batch that came back
  bool started_ = false;                  // a worker was started before
  std::string last_death_;                // how the last one died
};

}  // namespace

std::unique_ptr<Executor> make_process_executor(const ProcessOptions& options) {
  return std::make_unique<ProcessExecutor>(options);
}

}  // namespace gpulanes
