// CUDA green contexts: one GPU's SMs split into disjoint groups, one per lane, each with a stream
// created in its green context (cuGreenCtxStreamCreate). Kernels launched on such a stream run
// only on the group's SMs, while torch stays on the primary context (the lane's executor wraps
// the stream with c10::cuda::getStreamFromExternal). L2, DRAM bandwidth and copy engines stay
// shared, which is what the interference predictor is for.
//
// The device is split ONCE into groups of the minimum size the driver allows, and each lane's
// descriptor is made from k groups of that one split (cuDevResourceGenerateDesc takes several
// resources of the same split). Re-splitting a remainder through scratch contexts is what the
// driver documents weaker guarantees for, so it is never done.
//
// The driver API is loaded at run time (dlopen of libcuda.so.1): the package imports and runs
// on machines without a GPU driver, where green_context_support() says why it is unavailable.
// Created and destroyed by the runtime's control thread; the streams are used by lane workers.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace gpulanes {

// How one GPU's SMs split into green-context groups, read from the device (green_sm_split).
struct SmSplit {
  int device_sms = 0;     // SMs of the device
  int min_partition = 0;  // minSmPartitionSize of the device's SM resource
  int alignment = 0;      // smCoscheduledAlignment: SMs guaranteed co-scheduled together
  int group_sms = 0;      // SMs per group of the one split (min_partition at the alignment)
  int groups = 0;         // groups the split yields: SMs of incomplete clusters are left out
  int usable_sms() const { return group_sms * groups; }
};

// The number of groups of `split` each lane of `asked` SMs takes (each rounded up to whole
// groups). Throws Error(kInvalidInput) when they need more groups than the split has, before
// anything is built, saying what the device offers and a layout of as many lanes that fits.
// `where` names the device in the message ("cuda:0").
std::vector<int> green_groups_for(const SmSplit& split, const std::vector<int>& asked,
                                  const std::string& where);

// "" when a driver of this version (cuDriverGetVersion: 1000 x major + 10 x minor) can run green
// lanes, else why not. cuGreenCtxStreamCreate needs 12.5.
std::string green_driver_problem(int driver_version);

// "" when `device` supports green lanes, else why not: the driver, its split API, a dry-run
// split, and one green context with a stream made and destroyed. Checked once per device.
std::string green_context_support(int device);

// The split of `device` into minimum-size groups, from a dry run of the driver's split. Throws
// Error(kInvalidInput) saying why when green contexts are unavailable.
SmSplit green_sm_split(int device);

class GreenPartition {
 public:
  // One lane per entry of `sms`: each takes ceil(sms / group) groups of the device's one split
  // (disjoint). Throws Error(kInvalidInput) when green contexts are unsupported or the lanes do
  // not fit (green_groups_for), having built nothing.
  GreenPartition(int device, const std::vector<int>& sms);
  ~GreenPartition();
  GreenPartition(const GreenPartition&) = delete;
  GreenPartition& operator=(const GreenPartition&) = delete;

  int device() const { return device_; }
  int size() const { return static_cast<int>(groups_.size()); }
  // SMs actually granted to lane `i` (read back from its green context).
  int sms(int i) const;
  // Its stream (a CUstream / cudaStream_t), valid while the partition lives.
  void* stream(int i) const;

 private:
  struct Group;
  void release();  // destroys what was created so far
  const int device_;
  std::vector<std::unique_ptr<Group>> groups_;  // one per lane, in the order asked
};

}  // namespace gpulanes
