#include "gpulanes/model/aoti_package.h"

#include <ATen/Version.h>
#include <ATen/core/Tensor.h>
#include <torch/version.h>

// The package loader's API as used here (device index, boxed_run, metadata without loading)
// is that of torch 2.8 and later; older torch builds gpulanes without packages.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 8)
#define GPULANES_WITH_AOTI 1
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#endif

#include <algorithm>
#include <filesystem>
#include <utility>
#include <vector>

#include "gpulanes/core/error.h"
#include "gpulanes/core/error_text.h"

namespace gpulanes {
namespace {

using Metadata = std::map<std::string, std::string>;

std::string value_or(const Metadata& m, const std::string& key, const std::string& fallback) {
  auto it = m.find(key);
  return it == m.end() || it->second.empty() ? fallback : it->second;
}

// Vector instruction level of an ISA list such as "AVX512 AVX512_VNNI AMX_TILE" or of
// at::get_cpu_capability() ("AVX512", "AVX2", "DEFAULT"): code built for a level runs only where
// the CPU has at least that level.
int isa_level(const std::string& isa) {
  if (isa.find("AVX512") != std::string::npos) return 2;
  if (isa.find("AVX2") != std::string::npos) return 1;
  return 0;
}

std::string release(const std::string& version) { return version.substr(0, version.find('+')); }

[[noreturn]] void fail(const std::string& path, const std::string& why) {
  throw Error(ErrorCode::kModelError, "cannot load AOTInductor package '" + path + "': " + why);
}

#ifdef GPULANES_WITH_AOTI
class AotiInstance final : public ModelInstance {
 public:
  AotiInstance(const std::string& path, c10::DeviceIndex device_index)
      : loader_(path, "model", /*run_single_threaded=*/false, /*num_runners=*/1, device_index) {
    // The output's pytree spec; a bare tensor's top node is a leaf: [1, {"type": null, ...}].
    // Anything else (tuple, list, dict) comes back flattened, in the order the package lists.
    const std::vector<std::string> spec = loader_.get_call_spec();
    const std::size_t type = spec.size() >= 2 ? spec[1].find("\"type\": ") : std::string::npos;
    single_output_ = type != std::string::npos && spec[1].compare(type + 8, 4, "null") == 0;
  }

  c10::IValue forward(std::vector<c10::IValue> inputs, void* stream) override {
    std::vector<at::Tensor> tensors;
    tensors.reserve(inputs.size());
    for (c10::IValue& in : inputs) tensors.push_back(in.toTensor().contiguous());
    std::vector<at::Tensor> out = loader_.boxed_run(std::move(tensors), stream);
    if (single_output_ && out.size() == 1) return out[0];
    return c10::ivalue::Tuple::create(std::vector<c10::IValue>(out.begin(), out.end()));
  }

 private:
  torch::inductor::AOTIModelPackageLoader loader_;  // this lane's runner and weights
  bool single_output_ = false;                      // the model returns one tensor, not a tuple
};

#endif

class AotiProgram final : public ModelProgram {
 public:
  AotiProgram(std::string path, Metadata metadata)
      : path_(std::move(path)), metadata_(std::move(metadata)) {}

  std::string format() const override { return "aoti"; }

  ProgramSource source() const override { return {format(), path_, ""}; }

  std::unique_ptr<ModelInstance> instantiate(const c10::Device& device) const override {
    const std::string made_for = value_or(metadata_, "AOTI_DEVICE_KEY", "cpu");
    const std::string here = c10::DeviceTypeName(device.type(), /*lower_case=*/true);
    if (made_for != here) {
      fail(path_, "it was compiled for " + made_for + " and this lane runs on " + device.str() +
                      "; compile it for " + here + " (register the nn.Module or ExportedProgram "
                      "and gpulanes compiles it for the runtime's device)");
    }
    try {
#ifdef GPULANES_WITH_AOTI
      return std::make_unique<AotiInstance>(path_, device.is_cpu() ? -1 : device.index());
#else
      throw std::runtime_error("this gpulanes was built against a torch without the package "
                               "loader it uses (torch >= 2.8)");
#endif
    } catch (const std::exception& e) {
      fail(path_, error_text(e) + " (this is torch " + TORCH_VERSION +
                      ", package made with torch " +
                      value_or(metadata_, kPackageTorchVersionKey, "unknown") + ")");
    }
  }

 private:
  const std::string path_;  // the .pt2 file; each lane's loader extracts it
  const Metadata metadata_;
};

}  // namespace

Metadata aoti_package_metadata(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) fail(path, "no such file");
  try {
#ifdef GPULANES_WITH_AOTI
    auto m = torch::inductor::AOTIModelPackageLoader::load_metadata_from_package(path, "model");
    return Metadata(m.begin(), m.end());
#else
    fail(path, std::string("AOTInductor packages need torch >= 2.8; this is torch ") +
                   TORCH_VERSION);
#endif
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail(path, "not a readable AOTInductor package (" + error_text(e, 1000) +
                   ")");
  }
}

std::shared_ptr<const ModelProgram> load_aoti_package(const std::string& path) {
  Metadata metadata = aoti_package_metadata(path);
  const std::string made_with = value_or(metadata, kPackageTorchVersionKey, "");
  if (!made_with.empty() && release(made_with) != release(TORCH_VERSION)) {
    fail(path, "it was compiled with torch " + made_with + " and this is torch " + TORCH_VERSION +
                   "; compiled code is tied to the torch that made it, recompile it");
  }
  const std::string platform = value_or(metadata, "AOTI_PLATFORM", "linux");
#ifdef __linux__
  if (platform != "linux") fail(path, "it was compiled for " + platform + ", this is linux");
#endif
  if (value_or(metadata, "AOTI_DEVICE_KEY", "cpu") == "cpu") {
    const std::string isa = value_or(metadata, "AOTI_CPU_ISA", "");
    const std::string cpu = at::get_cpu_capability();
    if (isa_level(isa) > isa_level(cpu)) {
      fail(path, "it was compiled for CPUs with " + isa + " and this CPU's level is " + cpu);
    }
  }
  return std::make_shared<AotiProgram>(path, std::move(metadata));
}

}  // namespace gpulanes
