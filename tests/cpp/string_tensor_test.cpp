// String inputs: how they travel through the core (string tensors), how a batch of them becomes
// the List[str] a TorchScript model takes, and how a list of strings it returns is split.
#include <gtest/gtest.h>
#include <torch/script.h>

#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "gpulanes/core/error.h"
#include "gpulanes/core/string_tensor.h"
#include "gpulanes/exec/batching.h"
#include "gpulanes/model/program.h"
#include "gpulanes/runtime/runtime.h"
#include "test_support.h"

namespace gpulanes {
namespace {

using testing::Collector;

at::Tensor pack(std::vector<std::string_view> strings) { return pack_strings(strings); }

std::vector<std::string> unpack(const at::Tensor& t) {
  c10::List<std::string> list;
  unpack_strings(t, list);
  return {list.begin(), list.end()};
}

// The bytes of `raw` as a string tensor, whatever they say.
at::Tensor carrier_of(const std::string& raw) {
  at::Tensor t = at::empty({static_cast<std::int64_t>(raw.size())}, at::TensorOptions(kStringDtype));
  if (!raw.empty()) std::memcpy(t.mutable_data_ptr(), raw.data(), raw.size());
  return t;
}

std::string invalid_input(const at::Tensor& t) {
  try {
    count_strings(t, "input 0");
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidInput);
    return e.what();
  }
  ADD_FAILURE() << "accepted";
  return {};
}

TEST(StringTensor, HoldsAnyBytesInKServesFormAndGivesThemBack) {
  const std::string binary("\xff\x00z", 3);
  const at::Tensor t = pack({"hello", "", binary});
  EXPECT_EQ(t.scalar_type(), kStringDtype);
  EXPECT_EQ(t.numel(), 3 * 4 + 5 + 0 + 3);
  const auto* b = static_cast<const std::uint8_t*>(t.const_data_ptr());
  EXPECT_EQ(b[0], 5);  // little-endian length first, then the bytes
  EXPECT_EQ(b[1] | b[2] | b[3], 0);
  EXPECT_EQ(b[4], 'h');
  EXPECT_EQ(count_strings(t, "x"), 3u);
  EXPECT_EQ(unpack(t), (std::vector<std::string>{"hello", "", binary}));
  EXPECT_EQ(unpack(slice_strings(t, 1, 2)), (std::vector<std::string>{"", binary}));
  EXPECT_EQ(count_strings(pack({}), "x"), 0u);
}

TEST(StringTensor, LyingLengthsAndWrongTensorsAreRefusedNamingTheInput) {
  EXPECT_NE(invalid_input(carrier_of(std::string("\x09\x00\x00\x00" "abc", 7))).find(
                "string 0 says it has 9 bytes, 3 are left"),
            std::string::npos);
  EXPECT_NE(invalid_input(carrier_of(std::string("\xff\xff\xff\xff", 4))).find("says it has 4294967295"),
            std::string::npos);
  EXPECT_NE(invalid_input(carrier_of(std::string("\x01\x00\x00\x00" "a" "\x02\x00", 7)))
                .find("length is cut off (2 bytes left)"),
            std::string::npos);
  EXPECT_NE(invalid_input(torch::zeros({4})).find("input 0 must be strings"), std::string::npos);
  EXPECT_NE(invalid_input(pack({"ab"}).reshape({2, 3})).find("must be strings"), std::string::npos);
}

torch::jit::Module shout_module() {
  torch::jit::Module m("Shout");
  m.define(R"JIT(
    def forward(self, texts: List[str], x):
        out: List[str] = []
        for t in texts:
            out.append(t + "!")
        return out, x * 2.0
  )JIT");
  return m;
}

TEST(StringTensor, ABatchOfStringInputsIsOneListAndAListOutputSplitsPerRequest) {
  std::vector<RequestPtr> requests;
  for (const char* s : {"a", "bb", "ccc"}) {
    auto r = std::make_unique<Request>();
    r->inputs = {pack({s}), torch::full({2}, static_cast<float>(std::string_view(s).size()))};
    requests.push_back(std::move(r));
  }
  std::vector<c10::IValue> batch = stack_inputs(requests);
  ASSERT_TRUE(batch[0].isList());
  EXPECT_EQ(batch[0].toList().size(), 3u);
  EXPECT_EQ(batch[1].toTensor().sizes(), (at::IntArrayRef{3, 2}));
  auto program = torchscript_program(shout_module());
  c10::IValue out = program->instantiate(c10::Device(c10::kCPU))->forward(batch, nullptr);
  std::vector<c10::IValue> rows = split_output(out, 3, /*copy_rows=*/true);
  EXPECT_EQ(rows[1].toTupleRef().elements()[0].toStringRef(), "bb!");
  EXPECT_TRUE(rows[2].toTupleRef().elements()[1].toTensor().equal(torch::full({2}, 6.0f)));
  try {
    split_output(out, 4);
    ADD_FAILURE() << "a list of 3 strings split into 4 rows";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kModelError);
    EXPECT_NE(std::string(e.what()).find("one per request of the batch (4)"), std::string::npos);
  }
}

torch::jit::Module reverse_module() {
  torch::jit::Module m("Reverse");
  m.define(R"JIT(
    def forward(self, texts: List[str]):
        out: List[str] = []
        for t in texts:
            out.insert(0, t)
        return out
  )JIT");
  return m;
}

TEST(StringTensor, AModelWithoutABatchDimensionTakesAndReturnsWholeLists) {
  ModelSpec spec;
  spec.name = "reverse";
  spec.inputs = {TensorSpec{{-1}, kStringDtype}};
  spec.batched = false;
  spec.max_batch_size = 1;
  Runtime rt(RuntimeOptions{.device = "cpu"});
  rt.register_model(spec, reverse_module(), {pack({"x"})});  // the registry wraps it
  rt.start();
  Collector c;
  rt.submit("reverse", {pack({"1", "2", "3"})}, std::nullopt, 0, c.fn(0));
  rt.submit("reverse", {pack({})}, std::nullopt, 0, c.fn(1));
  c.wait_for(2);
  ASSERT_TRUE(c.outcomes[0].ok()) << c.outcomes[0].message;
  const c10::List<c10::IValue> got = c.outcomes[0].output.toList();
  ASSERT_EQ(got.size(), 3u) << c.outcomes[0].output;
  EXPECT_EQ(got.get(0).toStringRef(), "3");
  ASSERT_TRUE(c.outcomes[1].ok()) << c.outcomes[1].message;
  EXPECT_EQ(c.outcomes[1].output.toList().size(), 0u);
  rt.shutdown(true);
}

TEST(StringTensor, SubmitChecksStringInputsAgainstTheSpec) {
  ModelSpec spec;
  spec.name = "shout";
  spec.inputs = {TensorSpec{{}, kStringDtype}, TensorSpec{{2}, c10::kFloat}};
  spec.max_batch_size = 8;
  Runtime rt(RuntimeOptions{.device = "cpu"});
  rt.register_model(spec, shout_module(), {pack({"x"}), torch::zeros({2})});
  rt.start();
  auto refusal = [&](std::vector<at::Tensor> inputs) -> std::string {
    try {
      rt.submit("shout", std::move(inputs), std::nullopt, 0, [](Outcome&&) {});
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidInput);
      return e.what();
    }
    return "accepted";
  };
  EXPECT_NE(refusal({pack({"a", "b"}), torch::zeros({2})}).find("must be one string per request, got 2"),
            std::string::npos);
  EXPECT_NE(refusal({torch::zeros({2}), torch::zeros({2})}).find("input 0 must be strings"),
            std::string::npos);
  EXPECT_NE(refusal({pack({"a"}), pack({"b"})}).find("input 1 takes a tensor, Float[2]"), std::string::npos);
  EXPECT_NE(refusal({carrier_of(std::string("\x05\x00\x00\x00" "ab", 6)), torch::zeros({2})}).find("says it has 5"),
            std::string::npos);
  Collector c;
  for (int i = 0; i < 40; ++i) {
    rt.submit("shout", {pack({std::to_string(i)}), torch::full({2}, static_cast<float>(i))},
              std::nullopt, 0, c.fn(i));
  }
  c.wait_for(40);
  for (int i = 0; i < 40; ++i) {
    ASSERT_TRUE(c.outcomes[i].ok()) << c.outcomes[i].message;
    const auto& parts = c.outcomes[i].output.toTupleRef().elements();
    EXPECT_EQ(parts[0].toStringRef(), std::to_string(i) + "!");
    EXPECT_TRUE(parts[1].toTensor().equal(torch::full({2}, 2.0f * i)));
  }
  rt.shutdown(true);
}

}  // namespace
}  // namespace gpulanes
