// The NVIDIA MPS control daemon that MPS lanes' worker processes connect to (gpu-let's
// mechanism: one MPS client process per lane, its CUDA_MPS_ACTIVE_THREAD_PERCENTAGE its share of
// the SMs).
//
// Lifetime: acquire() returns the daemon already running for this user (its control pipe in
// CUDA_MPS_PIPE_DIRECTORY, else in /tmp/nvidia-mps), which is left running, or starts a private
// one (`nvidia-cuda-mps-control -d` with pipe and log directories of its own under the temporary
// directory), which the last owner of the returned object stops (`quit` on its control) and
// whose directories it removes. Every process lane on a GPU holds one reference, so the daemon
// outlives the workers that use it. A private daemon's directory names its owner's pid; before
// starting one, acquire() quits those whose owner is gone (killed without running the
// destructor). A daemon that does not start leaves its log, named in the error. Never changes
// the card's compute mode.
//
// Threads: acquire() and the destructor are called by the runtime's control thread (creating
// and replacing lanes); the accessors are constant after construction.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace gpulanes {

class MpsDaemon {
 public:
  // Throws Error(kInvalidInput) when there is no running daemon and no nvidia-cuda-mps-control
  // on PATH, or when the one it starts does not come up (with what its log says).
  static std::shared_ptr<MpsDaemon> acquire();
  ~MpsDaemon();
  MpsDaemon(const MpsDaemon&) = delete;
  MpsDaemon& operator=(const MpsDaemon&) = delete;

  // What a client sets CUDA_MPS_PIPE_DIRECTORY to.
  const std::string& pipe_dir() const { return pipe_dir_; }
  // Whether this object started the daemon (and stops it when the last reference goes).
  bool owned() const { return !root_.empty(); }

  // The control program's full path ("" when PATH has none).
  static std::string control_program();

 private:
  MpsDaemon(std::string pipe_dir, std::string root) : pipe_dir_(std::move(pipe_dir)), root_(std::move(root)) {}
  std::string pipe_dir_;  // the daemon's control pipe directory
  std::string root_;      // a private daemon's directory (pipe/ and log/ in it), "" when not ours
};

// This process's environment as "NAME=value" entries, with `set` replacing (or adding) its
// names: the environment of a program spawned with a few variables of its own.
std::vector<std::string> environment_with(const std::vector<std::pair<std::string, std::string>>& set);

}  // namespace gpulanes
