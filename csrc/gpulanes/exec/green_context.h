// CUDA green contexts: one GPU's SMs split into disjoint groups, one per lane, each with a stream
// created in its green context (cuGreenCtxStreamCreate). Kernels launched on such a stream run
// only on the group's SMs, while torch stays on the primary context (the lane's executor wraps
// the stream with c10::cuda::getStreamFromExternal). L2, DRAM bandwidth and copy engines stay
// shared, which is what the interference predictor is for.
//
// The driver API is loaded at run time (dlopen of libcuda.so.1): the package imports and runs
// on machines without a GPU driver, where green_context_support() says why it is unavailable.
// Created and destroyed by the runtime's control thread; the streams are used by lane workers.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace gpulanes {

// "" when `device` supports green contexts (driver >= 12.4 and the split API present), else the
// reason it does not.
std::string green_context_support(int device);

class GreenPartition {
 public:
  // Splits `device` into one SM group per entry of `sms` (each at least that many SMs, rounded
  // up to the device's granularity; disjoint). Throws Error(kInvalidInput) when green contexts
  // are unsupported or the groups do not fit.
  GreenPartition(int device, const std::vector<int>& sms);
  ~GreenPartition();
  GreenPartition(const GreenPartition&) = delete;
  GreenPartition& operator=(const GreenPartition&) = delete;

  int device() const { return device_; }
  int size() const { return static_cast<int>(groups_.size()); }
  // SMs actually granted to group `i` (read back from its green context).
  int sms(int i) const;
  // Its stream (a CUstream / cudaStream_t), valid while the partition lives.
  void* stream(int i) const;

 private:
  struct Group;
  void release();  // destroys what was created so far
  const int device_;
  std::vector<std::unique_ptr<Group>> groups_;  // one per lane, in the order asked
  std::vector<void*> scratch_;                  // green contexts used only to split further
};

}  // namespace gpulanes
