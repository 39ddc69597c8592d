// CUDA lane executor: one non-default stream per lane from torch's stream pool. Host-to-device
// copies, the forward pass and the device-to-host copy are all issued on that stream, and the
// only synchronization is on that stream, never device-wide. Two timing events bracket each run
// on the stream, so the lane knows the batch's device time (what profiles and the predictor
// need), separate from host overheads.
#include "gpulanes/core/error.h"
#include "gpulanes/exec/executor.h"

#ifdef GPULANES_WITH_CUDA
#include <c10/core/InferenceMode.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/script.h>

#include <cuda_runtime_api.h>

#include <unordered_map>

#include "gpulanes/exec/batching.h"
#endif

#include <torch/cuda.h>

namespace gpulanes {

int cuda_device_count() {
#ifdef GPULANES_WITH_CUDA
  return torch::cuda::is_available() ? static_cast<int>(torch::cuda::device_count()) : 0;
#else
  return 0;
#endif
}

int cuda_sm_count(int device) {
#ifdef GPULANES_WITH_CUDA
  int n = 0;
  if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) return 0;
  return n;
#else
  (void)device;
  return 0;
#endif
}

#ifdef GPULANES_WITH_CUDA
namespace {

class CudaStreamExecutor final : public Executor {
 public:
  CudaStreamExecutor(int device, bool outputs_on_device, void* external)
      : device_(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(device))),
        stream_(external ? c10::cuda::getStreamFromExternal(static_cast<cudaStream_t>(external),
                                                            device_.index())
                         : c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device_.index())),
        outputs_on_device_(outputs_on_device) {
    // ATen's CUDAEvent would pull in cuBLAS/cuSPARSE headers; the runtime API is enough.
    c10::cuda::CUDAGuard guard(device_);
    C10_CUDA_CHECK(cudaEventCreateWithFlags(&begin_, cudaEventDefault));  // timing enabled
    C10_CUDA_CHECK(cudaEventCreateWithFlags(&end_, cudaEventDefault));
  }
  ~CudaStreamExecutor() override {
    c10::cuda::CUDAGuard guard(device_);
    cudaEventDestroy(begin_);
    cudaEventDestroy(end_);
  }
  CudaStreamExecutor(const CudaStreamExecutor&) = delete;
  CudaStreamExecutor& operator=(const CudaStreamExecutor&) = delete;

  std::string device() const override { return device_.str(); }

  void load(int index, const torch::jit::Module& module) override {
    c10::cuda::CUDAGuard guard(device_);
    torch::jit::Module copy = module.clone();
    copy.to(device_);
    copy.eval();
    modules_.insert_or_assign(index, std::move(copy));
  }

  c10::IValue run(int index, std::vector<c10::IValue> inputs) override {
    c10::cuda::CUDAStreamGuard guard(stream_);
    c10::InferenceMode mode;
    last_device_ns_ = 0;
    C10_CUDA_CHECK(cudaEventRecord(begin_, stream_.stream()));
    for (auto& in : inputs) {
      in = map_tensors(in, [&](const at::Tensor& t) { return t.to(device_, /*non_blocking=*/true); });
    }
    c10::IValue out = modules_.at(index).forward(std::move(inputs));
    if (!outputs_on_device_) {
      // A blocking copy to pageable host memory waits for this stream only.
      out = map_tensors(out, [](const at::Tensor& t) { return t.to(c10::kCPU); });
    }
    C10_CUDA_CHECK(cudaEventRecord(end_, stream_.stream()));
    C10_CUDA_CHECK(cudaEventSynchronize(end_));
    float ms = 0;
    C10_CUDA_CHECK(cudaEventElapsedTime(&ms, begin_, end_));
    last_device_ns_ = static_cast<std::int64_t>(static_cast<double>(ms) * 1e6);
    return out;
  }

  std::int64_t last_device_ns() const override { return last_device_ns_; }
  void* stream_handle() const override { return stream_.stream(); }

 private:
  c10::Device device_;                                   // the GPU this lane runs on
  c10::cuda::CUDAStream stream_;                         // the lane's own stream
  bool outputs_on_device_;                               // keep outputs on the GPU
  std::unordered_map<int, torch::jit::Module> modules_;  // model index -> copy on device_
  cudaEvent_t begin_ = nullptr, end_ = nullptr;          // bracket each run (timing enabled)
  std::int64_t last_device_ns_ = 0;                      // begin_ -> end_ of the last run
};

}  // namespace

std::unique_ptr<Executor> make_cuda_stream_executor(int device, bool outputs_on_device,
                                                    void* stream) {
  return std::make_unique<CudaStreamExecutor>(device, outputs_on_device, stream);
}
#else
std::unique_ptr<Executor> make_cuda_stream_executor(int, bool, void*) {
  throw Error(ErrorCode::kInvalidInput, "this build of gpulanes has no CUDA support");
}
#endif

}  // namespace gpulanes
