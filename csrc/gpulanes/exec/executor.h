// The device-specific half of a lane: holds the lane's copy of every model on its device and
// runs one forward pass. Executors never decide anything; the event loop does. A lane's worker
// thread is the only caller of run() once the lane is started; load()/run() for warm-up happen
// on the starting thread before that.
#pragma once

#include <ATen/core/ivalue.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "gpulanes/core/error.h"
#include "gpulanes/core/request.h"
#include "gpulanes/core/time.h"

namespace gpulanes {

class ModelProgram;
class MpsDaemon;

class Executor {
 public:
  virtual ~Executor() = default;
  // "cpu", "cuda:0", ...
  virtual std::string device() const = 0;
  // Makes model `index` runnable here: this lane's instance of the program on its device.
  virtual void load(int index, const ModelProgram& program) = 0;
  // Frees this lane's instance of model `index` (nothing when it has none). Called while the
  // lane runs nothing of that model.
  virtual void unload(int /*index*/) {}
  // Whether load(), unload() and run() of one model may be called from another thread while
  // the lane's worker runs batches of the others: then a model is added to a serving lane in
  // place (loaded, warmed up and measured beside it) instead of on a new lane.
  virtual bool live_loads() const { return false; }
  // Models loaded here over the executor's life: what layout changes cost (tests, lanes()).
  int loads() const { return loads_.load(std::memory_order_relaxed); }
  // Runs forward on a batch whose inputs are stacked tensors (on any device). Returns the output
  // with tensors on the CPU, or on the executor's device when outputs_on_device was asked for.
  // Throws whatever the model throws.
  virtual c10::IValue run(int index, std::vector<c10::IValue> inputs) = 0;
  // Stacks the requests' samples into a batch, runs it and splits the output into one row per
  // request, each a copy of its own (split_output with copy_rows): what a served batch does.
  // Here on the calling thread, once their GPU inputs are ready; a CUDA executor stacks,
  // copies, runs, copies back and splits on its own stream.
  virtual std::vector<c10::IValue> run_requests(int index, std::span<const RequestPtr> requests);
  // Device time of the last run(), from its first copy to its outputs being ready, measured with
  // CUDA events on a GPU; 0 where there is no device clock (CPU).
  virtual std::int64_t last_device_ns() const { return 0; }
  // The CUDA stream it runs on (a cudaStream_t), or null on the CPU. For probes and tests.
  virtual void* stream_handle() const { return nullptr; }
  // A process lane's worker: its pid (0 when none runs), how often it was started again after
  // it died, and whether the lane gave up on it. Zero and false for in-process executors.
  virtual int worker_pid() const { return 0; }
  // The lane's thread calls this last, before it ends: a process lane stops and collects its
  // worker there (no zombie, nothing left running after shutdown).
  virtual void close() {}
  virtual int worker_restarts() const { return 0; }
  virtual bool broken() const { return false; }
  // An MPS lane's worker: its CUDA_MPS_ACTIVE_THREAD_PERCENTAGE (0: none set) and the daemon's
  // pipe directory it connects to.
  virtual int mps_thread_percentage() const { return 0; }
  virtual std::string mps_pipe_dir() const { return {}; }

 protected:
  std::atomic<int> loads_{0};  // load() calls that succeeded; each executor's load() adds one
};

// A forward pass lost with the process that ran it (killed, crashed, or stuck past the
// watchdog and killed). The lane fails the batch whole, without its culprit search: each re-run
// would start a worker again.
class WorkerLost : public Error {
 public:
  explicit WorkerLost(const std::string& message) : Error(ErrorCode::kModelError, message) {}
};

// A process lane's settings.
struct ProcessOptions {
  std::string worker_path;                     // the gpulanes_worker executable
  DurationNs watchdog_ns = 60'000'000'000;     // a batch still running after this: killed
  int max_restarts = 5;                        // deaths in a row before the lane gives up
  int threads = 0;                             // the worker's intra-op threads (0: the lane's)
  DurationNs spin_ns = 0;                      // each side polls this long for the other's
                                               // next message before it sleeps
  std::vector<std::string> libraries;          // loaded (dlopen) by the worker before models
  DurationNs retry_after_ns = 30'000'000'000;  // a lane that gave up tries again after this
  int device = -1;                             // the worker's CUDA device; -1: the CPU
  bool outputs_on_device = false;              // outputs go back to `device` in this process
  int thread_percentage = 0;                   // the worker's CUDA_MPS_ACTIVE_THREAD_PERCENTAGE
  std::shared_ptr<const MpsDaemon> mps;        // the MPS daemon its worker is a client of
  DurationNs start_timeout_ns = 20'000'000'000;  // a worker not ready by then is killed (an
                                               // MPS client that cannot reach its daemon hangs)
};

// Forward passes on the calling thread with torch's intra-op thread pool.
std::unique_ptr<Executor> make_cpu_executor();

// Forward passes on a dedicated CUDA stream of `device`: one from torch's pool, or `stream` (a
// cudaStream_t owned by someone else, e.g. a green context's) when given. Throws
// Error(kInvalidInput) when this build of gpulanes has no CUDA support.
std::unique_ptr<Executor> make_cuda_stream_executor(int device, bool outputs_on_device,
                                                    void* stream = nullptr);

// Forward passes in a worker process (gpulanes_worker), on the CPU or a GPU (an MPS client when
// options.mps is set): a model that crashes or hangs takes down only that process and the batch
// it ran; the next batch starts a new one.
std::unique_ptr<Executor> make_process_executor(const ProcessOptions& options);

// Rows handed out on GPU `device` that were made on its current stream (a process lane copies
// its worker's outputs there): waits for that stream alone, so each row is complete when its
// future resolves, then records each row on its request's submitter stream and the device's
// default stream (record_stream), so that the caching allocator does not reuse its memory while
// work queued there may still read it. Nothing without CUDA.
void hand_out_on_device(std::span<const c10::IValue> rows, std::span<const RequestPtr> requests,
                        int device);

// Whether this build can run CUDA lanes (and the machine has a usable GPU).
int cuda_device_count();
// Streaming multiprocessors of CUDA device `device` (0 without CUDA).
int cuda_sm_count(int device);

}  // namespace gpulanes
