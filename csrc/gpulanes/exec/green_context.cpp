#include "gpulanes/exec/green_context.h"

#include <algorithm>
#include <numeric>

#include "gpulanes/core/error.h"

#ifdef GPULANES_WITH_CUDA
#include <cuda.h>
#include <dlfcn.h>

#include <map>
#include <mutex>
#endif

namespace gpulanes {

namespace {

constexpr int kGreenStreamDriver = 12050;  // cuGreenCtxStreamCreate appeared in CUDA 12.5

std::string join(const std::vector<int>& v) {
  std::string s = "[";
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

// As many lanes as `need` (groups each) within `have` groups, each keeping at least one group
// and at most what it asked, sized in proportion to what it asked.
std::vector<int> shrink_to_fit(const std::vector<int>& need, int have) {
  const long total = std::accumulate(need.begin(), need.end(), 0L);
  std::vector<int> got;
  for (int k : need) got.push_back(std::max(1, static_cast<int>(static_cast<long>(k) * have / total)));
  auto sum = [&] { return std::accumulate(got.begin(), got.end(), 0); };
  while (sum() > have) {
    auto it = std::max_element(got.begin(), got.end());
    if (*it <= 1) break;
    --*it;
  }
  for (bool grew = true; grew && sum() < have;) {
    grew = false;
    for (std::size_t i = 0; i < got.size() && sum() < have; ++i) {
      if (got[i] < need[i]) ++got[i], grew = true;
    }
  }
  return got;
}

}  // namespace

std::vector<int> green_groups_for(const SmSplit& split, const std::vector<int>& asked,
                                  const std::string& where) {
  if (split.group_sms <= 0 || split.groups <= 0) {
    throw Error(ErrorCode::kInvalidInput, where + " cannot be split into green-context groups");
  }
  std::vector<int> need;
  for (std::size_t i = 0; i < asked.size(); ++i) {
    if (asked[i] < 1) {
      throw Error(ErrorCode::kInvalidInput, "lane " + std::to_string(i) + " on " + where +
                                                " asks for " + std::to_string(asked[i]) +
                                                " SMs; a green lane needs at least 1");
    }
    need.push_back((asked[i] + split.group_sms - 1) / split.group_sms);
  }
  const int total = std::accumulate(need.begin(), need.end(), 0);
  if (total <= split.groups) return need;
  std::string msg = "green lanes asking " + join(asked) + " SMs on " + where + " need " +
                    std::to_string(total) + " groups of " + std::to_string(split.group_sms) +
                    " SMs, and the device splits into " + std::to_string(split.groups) +
                    " such groups (" + std::to_string(split.usable_sms()) + " of its " +
                    std::to_string(split.device_sms) +
                    " SMs; every lane is rounded up to whole groups)";
  if (static_cast<int>(asked.size()) > split.groups) {
    msg += ": at most " + std::to_string(split.groups) + " green lanes fit";
  } else {
    std::vector<int> fits;
    for (int k : shrink_to_fit(need, split.groups)) fits.push_back(k * split.group_sms);
    msg += "; this fits: " + join(fits);
  }
  throw Error(ErrorCode::kInvalidInput, msg);
}

std::string green_driver_problem(int version) {
  if (version >= kGreenStreamDriver) return "";
  return "green lanes need a CUDA 12.5+ driver for cuGreenCtxStreamCreate (this one is " +
         std::to_string(version / 1000) + "." + std::to_string(version % 1000 / 10) + ")";
}

#ifdef GPULANES_WITH_CUDA
namespace {

// The driver entry points green contexts need, resolved once from libcuda.so.1.
struct Driver {
  void* lib = nullptr;
  std::string missing;  // why it is unusable ("" when usable)
  CUresult (*cuInit)(unsigned int) = nullptr;
  CUresult (*cuDriverGetVersion)(int*) = nullptr;
  CUresult (*cuDeviceGet)(CUdevice*, int) = nullptr;
  CUresult (*cuDeviceGetDevResource)(CUdevice, CUdevResource*, CUdevResourceType) = nullptr;
  CUresult (*cuDevSmResourceSplitByCount)(CUdevResource*, unsigned int*, const CUdevResource*,
                                          CUdevResource*, unsigned int, unsigned int) = nullptr;
  CUresult (*cuDevResourceGenerateDesc)(CUdevResourceDesc*, CUdevResource*, unsigned int) = nullptr;
  CUresult (*cuGreenCtxCreate)(CUgreenCtx*, CUdevResourceDesc, CUdevice, unsigned int) = nullptr;
  CUresult (*cuGreenCtxDestroy)(CUgreenCtx) = nullptr;
  CUresult (*cuGreenCtxGetDevResource)(CUgreenCtx, CUdevResource*, CUdevResourceType) = nullptr;
  CUresult (*cuGreenCtxStreamCreate)(CUstream*, CUgreenCtx, unsigned int, int) = nullptr;
  CUresult (*cuStreamDestroy)(CUstream) = nullptr;
  CUresult (*cuGetErrorString)(CUresult, const char**) = nullptr;

  template <class F>
  void load(F*& fn, const char* name) {
    fn = reinterpret_cast<F*>(dlsym(lib, name));
    if (!fn && missing.empty()) missing = std::string("libcuda has no ") + name + " (driver too old)";
  }
};

const Driver& driver() {
  static Driver d;
  static std::once_flag once;
  std::call_once(once, [] {
    d.lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!d.lib) {
      d.missing = "no CUDA driver (libcuda.so.1 not found)";
      return;
    }
    d.load(d.cuInit, "cuInit");
    d.load(d.cuDriverGetVersion, "cuDriverGetVersion");
    d.load(d.cuDeviceGet, "cuDeviceGet");
    d.load(d.cuDeviceGetDevResource, "cuDeviceGetDevResource");
    d.load(d.cuDevSmResourceSplitByCount, "cuDevSmResourceSplitByCount");
    d.load(d.cuDevResourceGenerateDesc, "cuDevResourceGenerateDesc");
    d.load(d.cuGreenCtxCreate, "cuGreenCtxCreate");
    d.load(d.cuGreenCtxDestroy, "cuGreenCtxDestroy");
    d.load(d.cuGreenCtxGetDevResource, "cuGreenCtxGetDevResource");
    d.load(d.cuGreenCtxStreamCreate, "cuGreenCtxStreamCreate");
    d.load(d.cuStreamDestroy, "cuStreamDestroy_v2");
    d.load(d.cuGetErrorString, "cuGetErrorString");
    if (!d.missing.empty()) return;
    int version = 0;
    if (d.cuInit(0) != CUDA_SUCCESS || d.cuDriverGetVersion(&version) != CUDA_SUCCESS) {
      d.missing = "the CUDA driver did not initialize";
    } else {
      d.missing = green_driver_problem(version);
    }
  });
  return d;
}

void check(CUresult r, const std::string& what) {
  if (r == CUDA_SUCCESS) return;
  const char* msg = nullptr;
  if (driver().cuGetErrorString) driver().cuGetErrorString(r, &msg);
  throw Error(ErrorCode::kInvalidInput,
              "green contexts: " + what + " failed: " + (msg ? msg : "unknown error"));
}

// The one split of a device: its groups (driver resources, all of one split) and their sizes.
struct DeviceSplit {
  CUdevice dev = 0;
  SmSplit split;
  std::vector<CUdevResource> groups;
};

DeviceSplit split_device(int device) {
  const Driver& d = driver();
  if (!d.missing.empty()) throw Error(ErrorCode::kInvalidInput, "green contexts unavailable: " + d.missing);
  DeviceSplit out;
  const std::string where = "cuda:" + std::to_string(device);
  check(d.cuDeviceGet(&out.dev, device), "cuDeviceGet(" + where + ")");
  CUdevResource whole;
  check(d.cuDeviceGetDevResource(out.dev, &whole, CU_DEV_RESOURCE_TYPE_SM),
        "cuDeviceGetDevResource(" + where + ")");
  out.split.device_sms = static_cast<int>(whole.sm.smCount);
  out.split.min_partition = static_cast<int>(whole.sm.minSmPartitionSize);
  out.split.alignment = static_cast<int>(whole.sm.smCoscheduledAlignment);
  // The driver rounds the minimum count up to its granularity itself; a driver that leaves the
  // fields at 0 is asked for groups of 1 and rounds likewise.
  const unsigned int min_count = static_cast<unsigned int>(std::max(1, out.split.min_partition));
  unsigned int n = 0;
  check(d.cuDevSmResourceSplitByCount(nullptr, &n, &whole, nullptr, 0, min_count),
        "dry-run split of " + where);
  if (n == 0) throw Error(ErrorCode::kInvalidInput, where + " cannot split its SMs into groups");
  out.groups.resize(n);
  CUdevResource rest;
  check(d.cuDevSmResourceSplitByCount(out.groups.data(), &n, &whole, &rest, 0, min_count),
        "splitting " + where + " into groups of " + std::to_string(min_count) + " SMs");
  out.groups.resize(n);
  int smallest = out.split.device_sms;
  for (const CUdevResource& g : out.groups) smallest = std::min(smallest, static_cast<int>(g.sm.smCount));
  out.split.group_sms = smallest;  // the driver makes them symmetrical; the smallest is safe
  out.split.groups = static_cast<int>(n);
  return out;
}

}  // namespace

struct GreenPartition::Group {
  CUgreenCtx ctx = nullptr;
  CUstream stream = nullptr;
  int sms = 0;
};

SmSplit green_sm_split(int device) { return split_device(device).split; }

// Makes one green context of one group, with a stream, and destroys them: a split can succeed
// where creating contexts fails (a driver or device mode that refuses them), and then every
// green lane would fail instead of green lanes being reported unsupported.
static void try_green_context(int device) {
  const DeviceSplit s = split_device(device);
  const Driver& d = driver();
  CUdevResourceDesc desc;
  check(d.cuDevResourceGenerateDesc(&desc, const_cast<CUdevResource*>(s.groups.data()), 1),
        "cuDevResourceGenerateDesc (support check)");
  CUgreenCtx ctx = nullptr;
  check(d.cuGreenCtxCreate(&ctx, desc, s.dev, CU_GREEN_CTX_DEFAULT_STREAM),
        "cuGreenCtxCreate (support check)");
  CUstream stream = nullptr;
  const CUresult made = d.cuGreenCtxStreamCreate(&stream, ctx, CU_STREAM_NON_BLOCKING, 0);
  if (stream) d.cuStreamDestroy(stream);
  d.cuGreenCtxDestroy(ctx);
  check(made, "cuGreenCtxStreamCreate (support check)");
}

std::string green_context_support(int device) {
  static std::mutex mu;
  static std::map<int, std::string> known;  // device -> why not ("" = supported), checked once
  std::lock_guard<std::mutex> lock(mu);
  auto it = known.find(device);
  if (it != known.end()) return it->second;
  std::string why;
  try {
    try_green_context(device);
  } catch (const Error& e) {
    why = e.what();
  }
  known.emplace(device, why);
  return why;
}

GreenPartition::GreenPartition(int device, const std::vector<int>& sms) : device_(device) {
  DeviceSplit s = split_device(device);
  const std::vector<int> take = green_groups_for(s.split, sms, "cuda:" + std::to_string(device));
  const Driver& d = driver();
  try {
    std::size_t next = 0;  // lanes take consecutive groups: neighbours in the split's order
    for (std::size_t i = 0; i < take.size(); ++i) {
      auto g = std::make_unique<Group>();
      const std::string lane = " for lane " + std::to_string(i);
      CUdevResourceDesc desc;
      check(d.cuDevResourceGenerateDesc(&desc, s.groups.data() + next, static_cast<unsigned>(take[i])),
            "cuDevResourceGenerateDesc" + lane);
      next += static_cast<std::size_t>(take[i]);
      check(d.cuGreenCtxCreate(&g->ctx, desc, s.dev, CU_GREEN_CTX_DEFAULT_STREAM),
            "cuGreenCtxCreate" + lane);
      Group* raw = g.get();
      groups_.push_back(std::move(g));  // owned now, so release() frees it if a later step throws
      check(d.cuGreenCtxStreamCreate(&raw->stream, raw->ctx, CU_STREAM_NON_BLOCKING, 0),
            "cuGreenCtxStreamCreate" + lane);
      CUdevResource granted;
      check(d.cuGreenCtxGetDevResource(raw->ctx, &granted, CU_DEV_RESOURCE_TYPE_SM),
            "cuGreenCtxGetDevResource" + lane);
      raw->sms = static_cast<int>(granted.sm.smCount);
    }
  } catch (...) {
    release();
    throw;
  }
}

GreenPartition::~GreenPartition() { release(); }

void GreenPartition::release() {
  const Driver& d = driver();
  for (auto& g : groups_) {
    if (g->stream) d.cuStreamDestroy(g->stream);
    if (g->ctx) d.cuGreenCtxDestroy(g->ctx);
  }
  groups_.clear();
}

int GreenPartition::sms(int i) const { return groups_.at(i)->sms; }
void* GreenPartition::stream(int i) const { return groups_.at(i)->stream; }

#else  // no CUDA in this build

struct GreenPartition::Group {};

namespace {
const char* const kNoCuda = "this build of gpulanes has no CUDA support";
}

std::string green_context_support(int) { return kNoCuda; }

SmSplit green_sm_split(int) {
  throw Error(ErrorCode::kInvalidInput, std::string("green contexts unavailable: ") + kNoCuda);
}

GreenPartition::GreenPartition(int device, const std::vector<int>&) : device_(device) {
  throw Error(ErrorCode::kInvalidInput, std::string("green contexts unavailable: ") + kNoCuda);
}
GreenPartition::~GreenPartition() = default;
void GreenPartition::release() {}
int GreenPartition::sms(int) const { return 0; }
void* GreenPartition::stream(int) const { return nullptr; }

#endif

}  // namespace gpulanes
