// CUDA lane executor: one non-default stream per lane (from torch's stream pool, or a green
// context's). Every kernel of a batch runs on that stream: stacking the samples, the copies in
// and out, the forward pass; the only synchronization is on that stream, never device-wide.
// Samples on the host are stacked into pinned memory so the copy to the GPU is asynchronous,
// and outputs come back through pinned memory; each request gets a row of its own. Samples
// already on a GPU are read only after the event their submitter's stream recorded at submit.
// Outputs left on the GPU are copied per request on the lane's stream and recorded on their
// submitter's stream (record_stream, also for process lanes: hand_out_on_device), so the caching
// allocator does not hand their memory to the next batch while work the submitter queued on
// them may still run. Two timing events
// bracket each run on the stream, so the lane knows the batch's device time (what profiles and
// the predictor need), separate from host overheads.
#include "gpulanes/core/error.h"
#include "gpulanes/exec/executor.h"

#ifdef GPULANES_WITH_CUDA
#include <c10/core/InferenceMode.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cuda_runtime_api.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <type_traits>
#include <unordered_map>

#include "gpulanes/core/string_tensor.h"
#include "gpulanes/exec/batching.h"
#include "gpulanes/model/program.h"
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

// An output handed out on the GPU: record its submitter's stream on `device` (and the device's
// default stream) so the caching allocator does not reuse its memory before the work queued
// there on it is done.
void record_for_consumer(const c10::IValue& row, const Request& request, c10::Device device) {
  const c10::Stream fallback = c10::cuda::getDefaultCUDAStream(device.index()).unwrap();
  const auto& consumer = request.consumer_stream;
  map_tensors(row, [&](const at::Tensor& t) {
    if (t.is_cuda()) {
      t.record_stream(fallback);
      if (consumer && consumer->device() == device && *consumer != fallback) {
        t.record_stream(*consumer);
      }
    }
    return t;
  });
}

}  // namespace

void hand_out_on_device(std::span<const c10::IValue> rows, std::span<const RequestPtr> requests,
                        int device) {
  const c10::Device where(c10::kCUDA, static_cast<c10::DeviceIndex>(device));
  c10::cuda::getCurrentCUDAStream(where.index()).synchronize();  // that stream only
  for (std::size_t i = 0; i < rows.size() && i < requests.size(); ++i) {
    record_for_consumer(rows[i], *requests[i], where);
  }
}

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

  void load(int index, const ModelProgram& program) override {
    c10::cuda::CUDAGuard guard(device_);
    instances_.insert_or_assign(index, program.instantiate(device_));
    loads_.fetch_add(1, std::memory_order_relaxed);
  }

  void unload(int index) override {
    c10::cuda::CUDAGuard guard(device_);
    instances_.erase(index);  // its memory goes back to the caching allocator
  }

  c10::IValue run(int index, std::vector<c10::IValue> inputs) override {
    return on_stream(
        index,
        [&] {
          for (auto& in : inputs) {
            in = map_tensors(in, [&](const at::Tensor& t) { return to_device(t); });
          }
          return std::move(inputs);
        },
        [&](c10::IValue out) { return outputs_on_device_ ? out : to_host(out); });
  }

  std::vector<c10::IValue> run_requests(int index, std::span<const RequestPtr> requests) override {
    const std::size_t n = requests.size();
    if (outputs_on_device_) {
      // Each row copied on the lane's stream into memory of its own, kept for its consumer.
      return on_stream(index, [&] { return stack(requests); }, [&](c10::IValue out) {
        std::vector<c10::IValue> rows = split_output(out, n, /*copy_rows=*/true);
        for (std::size_t i = 0; i < n; ++i) record_for_consumer(rows[i], *requests[i], device_);
        return rows;
      });
    }
    c10::IValue host = on_stream(index, [&] { return stack(requests); },
                                 [&](c10::IValue out) { return to_host(out); });
    // Rows in pageable memory of their own: the pinned batch goes back to the host cache.
    return split_output(host, n, /*copy_rows=*/true);
  }

  std::int64_t last_device_ns() const override { return last_device_ns_; }
  void* stream_handle() const override { return stream_.stream(); }

 private:
  // Runs model `index` on the inputs `make_inputs` issues, then `finish` on its output, all on
  // the lane's stream between the timing events; waits for that stream only.
  template <class MakeInputs, class Finish>
  std::invoke_result_t<Finish&, c10::IValue> on_stream(int index, MakeInputs&& make_inputs,
                                                       Finish&& finish) {
    c10::cuda::CUDAStreamGuard guard(stream_);
    c10::InferenceMode mode;
    last_device_ns_ = 0;
    C10_CUDA_CHECK(cudaEventRecord(begin_, stream_.stream()));
    auto out = finish(instances_.at(index)->forward(make_inputs(), stream_.stream()));
    C10_CUDA_CHECK(cudaEventRecord(end_, stream_.stream()));
    C10_CUDA_CHECK(cudaEventSynchronize(end_));
    float ms = 0;
    C10_CUDA_CHECK(cudaEventElapsedTime(&ms, begin_, end_));
    last_device_ns_ = static_cast<std::int64_t>(static_cast<double>(ms) * 1e6);
    return out;
  }

  // Outputs into pinned host memory, copied asynchronously on the current (lane) stream.
  static c10::IValue to_host(const c10::IValue& out) {
    return map_tensors(out, [](const at::Tensor& t) {
      at::Tensor host = at::empty(t.sizes(), t.options().device(c10::kCPU).pinned_memory(true));
      host.copy_(t, /*non_blocking=*/true);
      return host;
    });
  }

  // A host tensor goes through pinned memory, so the copy is asynchronous on the lane's stream.
  at::Tensor to_device(const at::Tensor& t) const {
    if (t.device() == device_) return t;
    if (t.is_cuda() || t.is_pinned()) return t.to(device_, /*non_blocking=*/true);
    return t.pin_memory().to(device_, /*non_blocking=*/true);
  }

  // One batched tensor per model input. Host samples are stacked straight into pinned memory
  // and copied once; GPU samples are stacked by a kernel on the lane's stream after the events
  // of their submitters' streams.
  std::vector<c10::IValue> stack(std::span<const RequestPtr> requests) const {
    const c10::Stream lane = stream_.unwrap();
    for (const RequestPtr& r : requests) {
      for (const c10::Event& ready : r->inputs_ready) ready.block(lane);
    }
    const std::size_t n = requests.size();
    const std::size_t arity = n ? requests.front()->inputs.size() : 0;
    std::vector<c10::IValue> out;
    std::vector<at::Tensor> column(n);
    for (std::size_t k = 0; k < arity; ++k) {
      bool on_host = true;
      for (std::size_t i = 0; i < n; ++i) {
        column[i] = requests[i]->inputs[k];
        on_host = on_host && !column[i].is_cuda();
      }
      if (is_string_tensor(column[0])) {
        out.emplace_back(stack_strings(column));  // a List[str]: TorchScript reads it on the host
      } else if (on_host) {
        std::vector<std::int64_t> sizes = column[0].sizes().vec();
        sizes.insert(sizes.begin(), static_cast<std::int64_t>(n));
        at::Tensor host = at::empty(sizes, column[0].options().pinned_memory(true));
        at::stack_out(host, column, 0);
        out.emplace_back(host.to(device_, /*non_blocking=*/true));
      } else {
        for (at::Tensor& t : column) t = to_device(t);
        out.emplace_back(at::stack(column, 0));  // the guard made the lane's stream current
      }
    }
    return out;
  }

  c10::Device device_;                                   // the GPU this lane runs on
  c10::cuda::CUDAStream stream_;                         // the lane's own stream
  bool outputs_on_device_;                               // keep outputs on the GPU
  std::unordered_map<int, std::unique_ptr<ModelInstance>> instances_;  // by model index, on device_
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
void hand_out_on_device(std::span<const c10::IValue>, std::span<const RequestPtr>, int) {}
#endif

}  // namespace gpulanes
