// Model programs: the one interface executors see, whatever format a model came in.
#include <gtest/gtest.h>
#include <torch/script.h>

#include <filesystem>
#include <fstream>

#include "gpulanes/core/error.h"
#include "gpulanes/model/aoti_package.h"
#include "gpulanes/model/program.h"
#include "test_support.h"

namespace gpulanes {
namespace {

TEST(ModelProgram, TorchScriptInstancesRunTheModuleOnTheCpu) {
  auto program = torchscript_program(testing::affine_module(0));
  EXPECT_EQ(program->format(), "torchscript");
  auto a = program->instantiate(c10::Device(c10::kCPU));
  auto b = program->instantiate(c10::Device(c10::kCPU));
  c10::InferenceMode mode;
  const at::Tensor x = torch::arange(8, torch::kFloat).reshape({2, 4});
  EXPECT_TRUE(a->forward({x}, nullptr).toTensor().equal(x * 2 + 1));
  EXPECT_TRUE(b->forward({x}, nullptr).toTensor().equal(x * 2 + 1));
}

// Asserts that `load` throws a kModelError whose message holds every one of `needles`.
template <class Load>
void expect_model_error(Load&& load, std::initializer_list<std::string> needles) {
  try {
    load();
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kModelError);
    for (const std::string& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
  }
}

TEST(AotiPackage, MissingOrCorruptPackagesAreModelErrorsNamingTheFile) {
  const auto dir = std::filesystem::temp_directory_path() / "gpulanes_program_test";
  std::filesystem::create_directories(dir);
  const std::string missing = (dir / "missing.pt2").string();
  expect_model_error([&] { load_aoti_package(missing); }, {missing, "no such file"});
  const std::string garbage = (dir / "garbage.pt2").string();
  std::ofstream(garbage) << "PK\x03\x04 not really a zip archive";
  expect_model_error([&] { load_aoti_package(garbage); }, {garbage, "not a readable"});
  const std::string torchscript = (dir / "module.pt").string();
  testing::affine_module(0).save(torchscript);  // a zip, but no package
  expect_model_error([&] { load_aoti_package(torchscript); }, {torchscript});
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace gpulanes
