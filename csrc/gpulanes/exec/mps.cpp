// MpsDaemon: finding, starting and stopping the MPS control daemon (mps.h says what it owns).
#include "gpulanes/exec/mps.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "gpulanes/core/error.h"

extern char** environ;

namespace gpulanes {
namespace {

namespace fs = std::filesystem;
constexpr const char* kControl = "nvidia-cuda-mps-control";

bool path_exists(const fs::path& p) {
  std::error_code ec;
  return fs::exists(p, ec);
}

// Runs the control program with `args` and the daemon's directories in its environment,
// `input` on its standard input; returns its exit status (-1 when it could not run or did not
// finish within 30 s, after which it is killed).
int run_control(const std::string& program, const std::vector<std::string>& args,
                const std::vector<std::pair<std::string, std::string>>& env, const std::string& input) {
  // A socket rather than a pipe for its standard input: send() with MSG_NOSIGNAL cannot raise
  // SIGPIPE when the program exits before reading.
  int in[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, in) != 0) return -1;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, in[0], 0);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
  std::vector<std::string> argv_s{program};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> envs = environment_with(env);
  std::vector<char*> envp;
  for (std::string& e : envs) envp.push_back(e.data());
  envp.push_back(nullptr);
  pid_t pid = 0;
  const int rc = ::posix_spawn(&pid, program.c_str(), &actions, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  ::close(in[0]);
  if (rc != 0) {
    ::close(in[1]);
    return -1;
  }
  if (!input.empty()) {
    [[maybe_unused]] ssize_t w = ::send(in[1], input.data(), input.size(), MSG_NOSIGNAL);
  }
  ::close(in[1]);
  int status = 0;
  for (int i = 0; i < 3000; ++i) {
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    if (r < 0 && errno != EINTR) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ::kill(pid, SIGKILL);
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return -1;
}

std::string log_tail(const fs::path& dir) {
  std::string out;
  for (const char* name : {"control.log", "server.log"}) {
    std::ifstream f(dir / name);
    std::stringstream s;
    s << f.rdbuf();
    std::string text = s.str();
    if (text.empty()) continue;
    if (text.size() > 1500) text = text.substr(text.size() - 1500);
    out += std::string(out.empty() ? "" : "; ") + name + ": " + text;
  }
  return out;
}

std::vector<std::pair<std::string, std::string>> daemon_env(const fs::path& root) {
  return {{"CUDA_MPS_PIPE_DIRECTORY", (root / "pipe").string()},
          {"CUDA_MPS_LOG_DIRECTORY", (root / "log").string()}};
}

// Quits the private daemons of runtimes that are gone (a process killed with SIGKILL never ran
// its MpsDaemon destructor) and removes their directories, so that a runtime does not start a
// second daemon beside one nobody stops. A directory without an owner file is left alone: its
// owner is still making it, or it keeps the log of a daemon that did not start.
void quit_orphans(const std::string& program) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(fs::temp_directory_path(), ec)) {
    const fs::path root = entry.path();
    if (root.filename().string().rfind("gpulanes-mps-", 0) != 0) continue;
    std::ifstream f(root / "owner");
    long pid = 0;
    if (!(f >> pid) || pid <= 0) continue;
    if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;  // it still runs
    if (path_exists(root / "pipe" / "control")) run_control(program, {}, daemon_env(root), "quit\n");
    std::error_code rm;
    fs::remove_all(root, rm);
  }
}

}  // namespace

std::vector<std::string> environment_with(const std::vector<std::pair<std::string, std::string>>& set) {
  std::vector<std::string> out;
  for (char** e = environ; e && *e; ++e) {
    const std::string entry(*e);
    const std::string name = entry.substr(0, entry.find('='));
    bool replaced = false;
    for (const auto& [k, v] : set) replaced = replaced || k == name;
    if (!replaced) out.push_back(entry);
  }
  for (const auto& [k, v] : set) out.push_back(k + "=" + v);
  return out;
}

std::string MpsDaemon::control_program() {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    if (dir.empty()) continue;
    const fs::path candidate = fs::path(dir) / kControl;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate.string();
  }
  return "";
}

std::shared_ptr<MpsDaemon> MpsDaemon::acquire() {
  // A daemon this user already runs: its control pipe is where clients would look for it.
  const char* configured = std::getenv("CUDA_MPS_PIPE_DIRECTORY");
  const std::string running = configured && *configured ? configured : "/tmp/nvidia-mps";
  if (path_exists(fs::path(running) / "control")) {
    return std::shared_ptr<MpsDaemon>(new MpsDaemon(running, ""));
  }
  const std::string program = control_program();
  if (program.empty()) {
    throw Error(ErrorCode::kInvalidInput,
                "partitioning='mps' needs NVIDIA MPS: no MPS daemon runs (no control pipe in " +
                    running + ") and nvidia-cuda-mps-control is not on PATH (it comes with the "
                    "NVIDIA driver's utilities)");
  }
  quit_orphans(program);
  std::string pattern = (fs::temp_directory_path() / "gpulanes-mps-XXXXXX").string();
  if (::mkdtemp(pattern.data()) == nullptr) {
    throw Error(ErrorCode::kInvalidInput, std::string("cannot make the MPS daemon's directory: ") +
                                              std::strerror(errno));
  }
  const fs::path root(pattern);
  std::error_code ec;
  fs::create_directory(root / "pipe", ec);
  fs::create_directory(root / "log", ec);
  std::ofstream(root / "owner") << ::getpid() << "\n";  // who stops it (quit_orphans reads it)
  const int rc = run_control(program, {"-d"}, daemon_env(root), "");
  for (int i = 0; rc == 0 && i < 1000 && !path_exists(root / "pipe" / "control"); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (rc != 0 || !path_exists(root / "pipe" / "control")) {
    // Its log stays (the owner file goes, so no one reaps it), for the error to point at.
    if (rc == 0) run_control(program, {}, daemon_env(root), "quit\n");  // up, but no pipe: stop it
    fs::remove_all(root / "pipe", ec);
    fs::remove(root / "owner", ec);
    const std::string log = log_tail(root / "log");
    throw Error(ErrorCode::kInvalidInput,
                "partitioning='mps': the MPS daemon did not start (" + program + " -d exited " +
                    std::to_string(rc) + "); its log is kept in " + (root / "log").string() +
                    (log.empty() ? "" : ": " + log));
  }
  // From here the object owns the directory and stops the daemon when the last user goes.
  return std::shared_ptr<MpsDaemon>(new MpsDaemon((root / "pipe").string(), root.string()));
}

MpsDaemon::~MpsDaemon() {
  if (root_.empty()) return;
  const fs::path root(root_);
  if (path_exists(root / "pipe" / "control")) {
    const std::string program = control_program();
    if (!program.empty()) run_control(program, {}, daemon_env(root), "quit\n");
    for (int i = 0; i < 500 && path_exists(root / "pipe" / "control"); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  std::error_code ec;
  fs::remove_all(root, ec);
}

}  // namespace gpulanes
