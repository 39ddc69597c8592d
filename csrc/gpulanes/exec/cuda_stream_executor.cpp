// CUDA lane executor: one non-default stream per lane from torch's stream pool. Host-to-device
// copies, the forward pass and the device-to-host copy are all issued on that stream, and the
// only synchronization is on that stream, never device-wide.
#include "gpulanes/core/error.h"
#include "gpulanes/exec/executor.h"

#ifdef GPULANES_WITH_CUDA
#include <c10/core/InferenceMode.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/script.h>

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

#ifdef GPULANES_WITH_CUDA
namespace {

class CudaStreamExecutor final : public Executor {
 public:
  CudaStreamExecutor(int device, bool outputs_on_device)
      : device_(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(device))),
        stream_(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device_.index())),
        outputs_on_device_(outputs_on_device) {}

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
    for (auto& in : inputs) {
      in = map_tensors(in, [&](const at::Tensor& t) { return t.to(device_, /*non_blocking=*/true); });
    }
    c10::IValue out = modules_.at(index).forward(std::move(inputs));
    if (outputs_on_device_) {
      stream_.synchronize();
      return out;
    }
    // A blocking copy to pageable host memory waits for this stream only.
    return map_tensors(out, [](const at::Tensor& t) { return t.to(c10::kCPU); });
  }

 private:
  c10::Device device_;                                   // the GPU this lane runs on
  c10::cuda::CUDAStream stream_;                         // the lane's own stream
  bool outputs_on_device_;                               // keep outputs on the GPU
  std::unordered_map<int, torch::jit::Module> modules_;  // model index -> copy on device_
};

}  // namespace

std::unique_ptr<Executor> make_cuda_stream_executor(int device, bool outputs_on_device) {
  return std::make_unique<CudaStreamExecutor>(device, outputs_on_device);
}
#else
std::unique_ptr<Executor> make_cuda_stream_executor(int, bool) {
  throw Error(ErrorCode::kInvalidInput, "this build of gpulanes has no CUDA support");
}
#endif

}  // namespace gpulanes
