#include "gpulanes/exec/green_context.h"

#include "gpulanes/core/error.h"

#ifdef GPULANES_WITH_CUDA
#include <cuda.h>
#include <dlfcn.h>

#include <mutex>
#endif

namespace gpulanes {

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
    } else if (version < 12040) {
      d.missing = "green contexts need a CUDA 12.4+ driver (this one is " +
                  std::to_string(version / 1000) + "." + std::to_string(version % 1000 / 10) + ")";
    }
  });
  return d;
}

void check(CUresult r, const char* what) {
  if (r == CUDA_SUCCESS) return;
  const char* msg = nullptr;
  if (driver().cuGetErrorString) driver().cuGetErrorString(r, &msg);
  throw Error(ErrorCode::kInvalidInput,
              std::string("green contexts: ") + what + " failed: " + (msg ? msg : "unknown error"));
}

}  // namespace

struct GreenPartition::Group {
  CUgreenCtx ctx = nullptr;
  CUstream stream = nullptr;
  int sms = 0;
};

std::string green_context_support(int device) {
  const Driver& d = driver();
  if (!d.missing.empty()) return d.missing;
  CUdevice dev;
  CUdevResource res;
  if (d.cuDeviceGet(&dev, device) != CUDA_SUCCESS ||
      d.cuDeviceGetDevResource(dev, &res, CU_DEV_RESOURCE_TYPE_SM) != CUDA_SUCCESS) {
    return "device " + std::to_string(device) + " reports no SM resource";
  }
  unsigned int groups = 0;  // dry run: can the SMs be split in two?
  if (d.cuDevSmResourceSplitByCount(nullptr, &groups, &res, nullptr, 0, res.sm.smCount / 2) !=
          CUDA_SUCCESS ||
      groups < 1) {
    return "device " + std::to_string(device) + " cannot split its SMs";
  }
  return "";
}

GreenPartition::GreenPartition(int device, const std::vector<int>& sms) : device_(device) {
  const std::string why = green_context_support(device);
  if (!why.empty()) throw Error(ErrorCode::kInvalidInput, "green contexts unavailable: " + why);
  const Driver& d = driver();
  CUdevice dev;
  check(d.cuDeviceGet(&dev, device), "cuDeviceGet");
  CUdevResource input;
  check(d.cuDeviceGetDevResource(dev, &input, CU_DEV_RESOURCE_TYPE_SM), "cuDeviceGetDevResource");
  try {
    for (std::size_t i = 0; i < sms.size(); ++i) {
      if (sms[i] < 1) throw Error(ErrorCode::kInvalidInput, "a green lane needs at least 1 SM");
      CUdevResource group, rest;
      unsigned int n = 1;
      check(d.cuDevSmResourceSplitByCount(&group, &n, &input, &rest, 0,
                                          static_cast<unsigned int>(sms[i])),
            ("splitting " + std::to_string(sms[i]) + " SMs for lane " + std::to_string(i)).c_str());
      if (n != 1) {
        throw Error(ErrorCode::kInvalidInput, "green contexts: not enough SMs left for lane " +
                                                  std::to_string(i) + " (" +
                                                  std::to_string(sms[i]) + " asked)");
      }
      auto g = std::make_unique<Group>();
      CUdevResourceDesc desc;
      check(d.cuDevResourceGenerateDesc(&desc, &group, 1), "cuDevResourceGenerateDesc");
      check(d.cuGreenCtxCreate(&g->ctx, desc, dev, CU_GREEN_CTX_DEFAULT_STREAM), "cuGreenCtxCreate");
      check(d.cuGreenCtxStreamCreate(&g->stream, g->ctx, CU_STREAM_NON_BLOCKING, 0),
            "cuGreenCtxStreamCreate");
      CUdevResource granted;
      check(d.cuGreenCtxGetDevResource(g->ctx, &granted, CU_DEV_RESOURCE_TYPE_SM),
            "cuGreenCtxGetDevResource");
      g->sms = static_cast<int>(granted.sm.smCount);
      groups_.push_back(std::move(g));
      if (i + 1 == sms.size()) break;
      // The rest can be split again only through a green context of its own.
      CUdevResourceDesc rest_desc;
      CUgreenCtx rest_ctx = nullptr;
      check(d.cuDevResourceGenerateDesc(&rest_desc, &rest, 1), "cuDevResourceGenerateDesc (rest)");
      check(d.cuGreenCtxCreate(&rest_ctx, rest_desc, dev, CU_GREEN_CTX_DEFAULT_STREAM),
            "cuGreenCtxCreate (rest)");
      scratch_.push_back(rest_ctx);
      check(d.cuGreenCtxGetDevResource(rest_ctx, &input, CU_DEV_RESOURCE_TYPE_SM),
            "cuGreenCtxGetDevResource (rest)");
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
  for (void* c : scratch_) d.cuGreenCtxDestroy(static_cast<CUgreenCtx>(c));
  scratch_.clear();
}

int GreenPartition::sms(int i) const { return groups_.at(i)->sms; }
void* GreenPartition::stream(int i) const { return groups_.at(i)->stream; }

#else  // no CUDA in this build

struct GreenPartition::Group {};

std::string green_context_support(int) { return "this build of gpulanes has no CUDA support"; }

GreenPartition::GreenPartition(int device, const std::vector<int>&) : device_(device) {
  throw Error(ErrorCode::kInvalidInput, "green contexts unavailable: " + green_context_support(device));
}
GreenPartition::~GreenPartition() = default;
void GreenPartition::release() {}
int GreenPartition::sms(int) const { return 0; }
void* GreenPartition::stream(int) const { return nullptr; }

#endif

}  // namespace gpulanes
