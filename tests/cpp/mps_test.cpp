// MpsDaemon against a stand-in nvidia-cuda-mps-control (a shell script that does what the real
// one does with its pipe directory and logs how it was called): which daemon is used, what a
// private one is started and stopped with, what is left behind, and the errors.
#include <gtest/gtest.h>

#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>

#include "gpulanes/core/error.h"
#include "gpulanes/exec/mps.h"

namespace gpulanes {
namespace {

namespace fs = std::filesystem;

std::string read(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

int private_dirs() {
  int n = 0;
  for (const auto& e : fs::directory_iterator(fs::temp_directory_path())) {
    n += e.path().filename().string().rfind("gpulanes-mps-", 0) == 0;
  }
  return n;
}

// Sets an environment variable for the test's lifetime.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::optional<std::string>& value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value) {
      ::setenv(name, value->c_str(), 1);
    } else {
      ::unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

class MpsDaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (fs::exists("/tmp/nvidia-mps/control")) GTEST_SKIP() << "a real MPS daemon runs here";
    dir_ = fs::temp_directory_path() / ("gpulanes_mps_test_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "bin");
    log_ = dir_ / "calls.log";
  }
  void TearDown() override { fs::remove_all(dir_); }

  // The stand-in: `-d` makes the control pipe (or fails with `fail_start`, writing its log);
  // otherwise it reads a command, and `quit` removes the pipe.
  void install_fake(bool fail_start = false) {
    const fs::path program = dir_ / "bin" / "nvidia-cuda-mps-control";
    std::ofstream f(program);
    f << "#!/bin/sh\n"
      << "echo \"args=$* pipe=$CUDA_MPS_PIPE_DIRECTORY log=$CUDA_MPS_LOG_DIRECTORY\" >> " << log_ << "\n"
      << "if [ \"$1\" = -d ]; then\n"
      << (fail_start ? "  echo 'no CUDA-capable device' > \"$CUDA_MPS_LOG_DIRECTORY/control.log\"; exit 1\n"
                     : "  touch \"$CUDA_MPS_PIPE_DIRECTORY/control\"; exit 0\n")
      << "fi\n"
      << "read cmd; echo \"cmd=$cmd\" >> " << log_ << "\n"
      << "[ \"$cmd\" = quit ] && rm -f \"$CUDA_MPS_PIPE_DIRECTORY/control\"\n"
      << "exit 0\n";
    f.close();
    fs::permissions(program, fs::perms::owner_all);
  }

  fs::path dir_;
  fs::path log_;
};

TEST_F(MpsDaemonTest, StartsAPrivateDaemonWithItsOwnDirectoriesAndQuitsItAtTheEnd) {
  install_fake();
  ScopedEnv path("PATH", (dir_ / "bin").string() + ":/usr/bin:/bin");
  ScopedEnv pipe("CUDA_MPS_PIPE_DIRECTORY", std::nullopt);
  const int before = private_dirs();
  std::string pipe_dir;
  {
    std::shared_ptr<MpsDaemon> daemon = MpsDaemon::acquire();
    EXPECT_TRUE(daemon->owned());
    pipe_dir = daemon->pipe_dir();
    EXPECT_TRUE(fs::exists(fs::path(pipe_dir) / "control"));
    EXPECT_EQ(private_dirs(), before + 1);
    const std::string calls = read(log_);
    EXPECT_NE(calls.find("args=-d pipe=" + pipe_dir), std::string::npos) << calls;
    EXPECT_NE(calls.find("log=" + fs::path(pipe_dir).parent_path().string() + "/log"),
              std::string::npos) << calls;
    EXPECT_EQ(calls.find("cmd="), std::string::npos) << "stopped while held: " << calls;
  }
  EXPECT_NE(read(log_).find("cmd=quit"), std::string::npos) << read(log_);
  EXPECT_FALSE(fs::exists(pipe_dir));
  EXPECT_EQ(private_dirs(), before);
}

TEST_F(MpsDaemonTest, UsesTheDaemonAlreadyRunningAndLeavesItRunning) {
  install_fake();
  fs::create_directories(dir_ / "running");
  std::ofstream(dir_ / "running" / "control").close();
  ScopedEnv path("PATH", (dir_ / "bin").string() + ":/usr/bin:/bin");
  ScopedEnv pipe("CUDA_MPS_PIPE_DIRECTORY", (dir_ / "running").string());
  {
    std::shared_ptr<MpsDaemon> daemon = MpsDaemon::acquire();
    EXPECT_FALSE(daemon->owned());
    EXPECT_EQ(daemon->pipe_dir(), (dir_ / "running").string());
  }
  EXPECT_TRUE(fs::exists(dir_ / "running" / "control"));
  EXPECT_FALSE(fs::exists(log_)) << "the control program was run: " << read(log_);
}

TEST_F(MpsDaemonTest, WithoutMpsTheErrorSaysWhatIsMissing) {
  ScopedEnv path("PATH", (dir_ / "bin").string());  // no control program there
  ScopedEnv pipe("CUDA_MPS_PIPE_DIRECTORY", std::nullopt);
  try {
    MpsDaemon::acquire();
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidInput);
    EXPECT_NE(std::string(e.what()).find("nvidia-cuda-mps-control"), std::string::npos) << e.what();
  }
}

TEST_F(MpsDaemonTest, ADaemonThatDoesNotStartIsReportedWithItsLogWhichIsKept) {
  install_fake(/*fail_start=*/true);
  ScopedEnv path("PATH", (dir_ / "bin").string() + ":/usr/bin:/bin");
  ScopedEnv pipe("CUDA_MPS_PIPE_DIRECTORY", std::nullopt);
  const int before = private_dirs();
  std::string message;
  try {
    MpsDaemon::acquire();
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidInput);
    message = e.what();
  }
  EXPECT_NE(message.find("did not start"), std::string::npos) << message;
  EXPECT_NE(message.find("no CUDA-capable device"), std::string::npos) << message;
  // The log stays where the error says, and nothing else of the daemon does.
  const std::size_t at = message.find("its log is kept in ");
  ASSERT_NE(at, std::string::npos) << message;
  const fs::path log_dir = message.substr(at + 19, message.find(':', at + 19) - at - 19);
  EXPECT_NE(read(log_dir / "control.log").find("no CUDA-capable device"), std::string::npos);
  EXPECT_FALSE(fs::exists(log_dir.parent_path() / "pipe"));
  EXPECT_EQ(private_dirs(), before + 1);
  fs::remove_all(log_dir.parent_path());
}

TEST_F(MpsDaemonTest, TheDaemonOfARuntimeThatDiedIsQuitBeforeANewOneStarts) {
  install_fake();
  ScopedEnv path("PATH", (dir_ / "bin").string() + ":/usr/bin:/bin");
  ScopedEnv pipe("CUDA_MPS_PIPE_DIRECTORY", std::nullopt);
  // Left by a runtime killed with SIGKILL (its pid is gone), and one whose runtime still runs.
  // pid_max itself is never handed out (pids stay below it): a runtime that is surely gone.
  pid_t gone = 4194304;
  std::ifstream("/proc/sys/kernel/pid_max") >> gone;
  const fs::path orphan = fs::temp_directory_path() / ("gpulanes-mps-orphan" + std::to_string(::getpid()));
  const fs::path alive = fs::temp_directory_path() / ("gpulanes-mps-alive" + std::to_string(::getpid()));
  for (const auto& [root, owner] : {std::pair{orphan, gone}, std::pair{alive, ::getpid()}}) {
    fs::create_directories(root / "pipe");
    std::ofstream(root / "pipe" / "control").close();
    std::ofstream(root / "owner") << owner << "\n";
  }
  {
    std::shared_ptr<MpsDaemon> daemon = MpsDaemon::acquire();
    EXPECT_TRUE(daemon->owned());
    EXPECT_TRUE(fs::exists(fs::path(daemon->pipe_dir()).parent_path() / "owner"));
  }
  const std::string calls = read(log_);
  EXPECT_NE(calls.find("pipe=" + (orphan / "pipe").string()), std::string::npos) << calls;
  EXPECT_FALSE(fs::exists(orphan));
  EXPECT_TRUE(fs::exists(alive / "pipe" / "control"));
  EXPECT_EQ(calls.find("pipe=" + (alive / "pipe").string()), std::string::npos) << calls;
  fs::remove_all(alive);
}

TEST(Environment, ReplacesTheNamesItSetsAndKeepsTheRest) {
  ScopedEnv keep("GPULANES_TEST_KEEP", std::string("1"));
  ScopedEnv replace("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", std::string("100"));
  const std::vector<std::string> env =
      environment_with({{"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "25"}, {"GPULANES_TEST_NEW", "x"}});
  auto count = [&](const std::string& entry) { return std::count(env.begin(), env.end(), entry); };
  EXPECT_EQ(count("GPULANES_TEST_KEEP=1"), 1);
  EXPECT_EQ(count("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25"), 1);
  EXPECT_EQ(count("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=100"), 0);
  EXPECT_EQ(count("GPULANES_TEST_NEW=x"), 1);
}

}  // namespace
}  // namespace gpulanes
