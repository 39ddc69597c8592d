// The core's KServe v2 gRPC front end: the request rules (decode_infer / encode_outputs) and the
// server driven by a grpc++ client: results, forwarded calls answered from another thread or
// dropped, the bearer token, client deadlines and cancellations racing the runtime's answer,
// stop() with calls in flight, and ModelStreamInfer streams (answered, cancelled, stopped). Each call must be answered exactly once, which the
// sanitizer builds (scripts/sanitize.sh) check as well.
#include <gtest/gtest.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/codegen/proto_utils.h>
#include <torch/script.h>

#include <future>
#include <set>
#include <thread>

#include "gpulanes/core/string_tensor.h"
#include "gpulanes/runtime/runtime.h"
#include "gpulanes/serve/grpc_frontend.h"
#include "test_support.h"

using namespace gpulanes;
using namespace gpulanes::serve;
using namespace gpulanes::testing;

namespace {

ServedModel affine_io(std::vector<std::string> outputs = {}) {
  return ServedModel{{"INPUT__0"}, {at::kFloat}, {{4}}, std::move(outputs)};
}

std::shared_ptr<inference::ModelInferRequest> raw_request(const std::string& name,
                                                          std::vector<std::int64_t> shape,
                                                          const at::Tensor& values,
                                                          const char* datatype = "FP32") {
  auto r = std::make_shared<inference::ModelInferRequest>();
  auto* t = r->add_inputs();
  t->set_name(name);
  t->set_datatype(datatype);
  for (auto d : shape) t->add_shape(d);
  at::Tensor c = values.contiguous();
  r->add_raw_input_contents(static_cast<const char*>(c.const_data_ptr()), c.nbytes());
  return r;
}

// The message of the kInvalidInput decoding `r` throws ("" if it does not throw).
std::string refusal(const std::shared_ptr<inference::ModelInferRequest>& r,
                    const ServedModel& io = affine_io(), int max_rows = 4) {
  try {
    decode_infer("m", io, r, max_rows);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidInput) << e.what();
    return e.what();
  }
  return "";
}

}  // namespace

TEST(KserveInfer, RawBytesBecomeOneViewPerRow) {
  auto r = raw_request("INPUT__0", {2, 4}, torch::arange(8, torch::kFloat));
  DecodedInfer d = decode_infer("m", affine_io(), r, 4);
  ASSERT_EQ(d.rows.size(), 2u);
  EXPECT_TRUE(torch::equal(d.rows[1][0], torch::arange(4, 8, torch::kFloat)));
  EXPECT_FALSE(d.timeout_ms.has_value());
  EXPECT_EQ(d.priority, 0);
}

TEST(KserveInfer, BytesRowsAreStringTensorsAndStringOutputsAreBytes) {
  const std::string raw("\x02\x00\x00\x00" "ab" "\x00\x00\x00\x00" "\x01\x00\x00\x00" "\xff", 15);
  auto r = std::make_shared<inference::ModelInferRequest>();
  auto* t = r->add_inputs();
  t->set_name("TEXT");
  t->set_datatype("BYTES");
  t->add_shape(3);
  t->add_shape(1);
  r->add_raw_input_contents(raw);
  ServedModel io{{"TEXT"}, {kStringDtype}, {{1}}, {}};
  DecodedInfer d = decode_infer("m", io, r, 4);
  ASSERT_EQ(d.rows.size(), 3u);
  c10::List<std::string> row2;
  unpack_strings(d.rows[2][0], row2);
  ASSERT_EQ(row2.size(), 1u);
  EXPECT_EQ(row2.get(0), "\xff");
  EXPECT_EQ(count_strings(d.rows[1][0], "row 1"), 1u);

  r->set_raw_input_contents(0, raw.substr(0, 14));  // the last string's byte is missing
  EXPECT_NE(refusal(r, io).find("input 'TEXT': string 2 says it has 1 bytes, 0 are left"),
            std::string::npos);
  r->set_raw_input_contents(0, raw.substr(0, 10));  // two strings for three rows
  EXPECT_NE(refusal(r, io).find("input 'TEXT': 2 strings for shape [3, 1] (3 expected)"),
            std::string::npos);
  r->clear_raw_input_contents();
  for (const char* s : {"x", "y"}) t->mutable_contents()->add_bytes_contents(s);
  EXPECT_NE(refusal(r, io).find("2 values in contents.bytes_contents"), std::string::npos);
  t->mutable_contents()->add_bytes_contents("z");
  EXPECT_EQ(decode_infer("m", io, r, 4).rows.size(), 3u);

  inference::ModelInferResponse reply;
  const std::string_view a = "A", b = "";
  encode_outputs("m", io, {}, {{pack_strings({&a, 1})}, {pack_strings({&b, 1})}}, &reply);
  ASSERT_EQ(reply.outputs_size(), 1);
  EXPECT_EQ(reply.outputs(0).datatype(), "BYTES");
  EXPECT_EQ(reply.outputs(0).shape_size(), 2);
  EXPECT_EQ(reply.outputs(0).shape(0), 2);
  EXPECT_EQ(reply.raw_output_contents(0), std::string("\x01\x00\x00\x00" "A" "\x00\x00\x00\x00", 9));
}

TEST(KserveInfer, TypedContentsAndTheirLimits) {
  auto r = std::make_shared<inference::ModelInferRequest>();
  auto* t = r->add_inputs();
  t->set_name("INPUT__0");
  t->set_datatype("INT8");
  t->add_shape(1);
  t->add_shape(2);
  t->mutable_contents()->add_int_contents(-128);
  t->mutable_contents()->add_int_contents(127);
  ServedModel io{{"INPUT__0"}, {at::kChar}, {{2}}, {}};
  DecodedInfer d = decode_infer("m", io, r, 4);
  EXPECT_EQ(d.rows[0][0][0].item<int>(), -128);
  t->mutable_contents()->set_int_contents(1, 128);
  EXPECT_NE(refusal(r, io).find("values do not fit INT8"), std::string::npos);
  t->mutable_contents()->add_int_contents(1);
  EXPECT_NE(refusal(r, io).find("3 values in contents.int_contents"), std::string::npos);
  ServedModel half{{"INPUT__0"}, {at::kHalf}, {{2}}, {}};
  t->set_datatype("FP16");
  EXPECT_NE(refusal(r, half).find("must come in raw_input_contents"), std::string::npos);
}

TEST(KserveInfer, EveryMalformedRequestIsRefusedByName) {
  const at::Tensor four = torch::zeros({4});
  EXPECT_NE(refusal(raw_request("X", {1, 4}, four)).find("unknown input(s) ['X']"),
            std::string::npos);
  auto twice = raw_request("INPUT__0", {1, 4}, four);
  twice->add_inputs()->CopyFrom(twice->inputs(0));
  EXPECT_NE(refusal(twice).find("is given twice"), std::string::npos);
  EXPECT_NE(refusal(raw_request("INPUT__0", {1, 4}, four, "FP64")).find("datatype 'FP64'"),
            std::string::npos);
  EXPECT_NE(refusal(raw_request("INPUT__0", {1, 5}, torch::zeros({5}))).find("[batch >= 1, 4]"),
            std::string::npos);
  EXPECT_NE(refusal(raw_request("INPUT__0", {0, 4}, four)).find("[batch >= 1, 4]"),
            std::string::npos);
  EXPECT_NE(refusal(raw_request("INPUT__0", {-1, 4}, four)).find("non-empty list of sizes"),
            std::string::npos);
  EXPECT_NE(refusal(raw_request("INPUT__0", {5, 4}, torch::zeros({5, 4}))).find("at most 4"),
            std::string::npos);
  EXPECT_NE(refusal(raw_request("INPUT__0", {2, 4}, four)).find("16 bytes of binary data"),
            std::string::npos);
  auto extra = raw_request("INPUT__0", {1, 4}, four);
  extra->add_raw_input_contents("x");
  EXPECT_NE(refusal(extra).find("2 entries for 1 inputs"), std::string::npos);
  ServedModel two{{"a", "b"}, {at::kFloat, at::kFloat}, {{4}, {4}}, {}};
  auto rows = raw_request("a", {1, 4}, four);
  auto* b = rows->add_inputs();
  b->CopyFrom(rows->inputs(0));
  b->set_name("b");
  b->set_shape(0, 2);
  rows->add_raw_input_contents(std::string(32, '\0'));
  EXPECT_NE(refusal(rows, two).find("disagree on the batch size: [1, 2]"), std::string::npos);
  rows->mutable_inputs()->RemoveLast();
  rows->mutable_raw_input_contents()->RemoveLast();
  EXPECT_NE(refusal(rows, two).find("missing input(s) ['b']"), std::string::npos);
  auto none = std::make_shared<inference::ModelInferRequest>();
  EXPECT_NE(refusal(none, ServedModel{}).find("takes no inputs"), std::string::npos);
}

TEST(KserveInfer, TimeoutAndPriorityParameters) {
  auto r = raw_request("INPUT__0", {1, 4}, torch::zeros({4}));
  auto& p = *r->mutable_parameters();
  p["timeout"].set_int64_param(2500);
  p["priority"].set_uint64_param(2);
  DecodedInfer d = decode_infer("m", affine_io(), r, 4);
  EXPECT_DOUBLE_EQ(*d.timeout_ms, 2.5);
  EXPECT_EQ(d.priority, 1);
  p["priority"].set_int64_param(1);
  EXPECT_EQ(decode_infer("m", affine_io(), r, 4).priority, 0);
  for (auto bad : {0.0, -1.0, std::nan(""), 1e300}) {
    p["timeout"].set_double_param(bad);
    EXPECT_NE(refusal(r).find("parameters.timeout must be > 0"), std::string::npos) << bad;
  }
  p["timeout"].set_bool_param(true);
  EXPECT_NE(refusal(r).find("got True"), std::string::npos);
  p["timeout"].set_int64_param(10);
  p["priority"].set_double_param(1.0);
  EXPECT_NE(refusal(r).find("parameters.priority must be an integer >= 0, got 1.0"),
            std::string::npos);
  p["priority"].set_int64_param(-3);
  EXPECT_NE(refusal(r).find("got -3"), std::string::npos);
}

TEST(KserveInfer, OutputsAreStackedNamedAndChosen) {
  std::vector<std::vector<at::Tensor>> rows = {{torch::ones({2}), torch::zeros({3}, torch::kLong)},
                                               {torch::ones({2}) * 2, torch::ones({3}, torch::kLong)}};
  inference::ModelInferResponse reply;
  encode_outputs("m", affine_io({"y"}), {"OUTPUT__1"}, rows, &reply);
  ASSERT_EQ(reply.outputs_size(), 1);
  EXPECT_EQ(reply.outputs(0).name(), "OUTPUT__1");
  EXPECT_EQ(reply.outputs(0).datatype(), "INT64");
  EXPECT_EQ(reply.outputs(0).shape(0), 2);
  EXPECT_EQ(reply.raw_output_contents(0).size(), 2u * 3 * 8);
  try {
    encode_outputs("m", affine_io({"y"}), {"z"}, rows, &reply);
    FAIL() << "an unknown output passed";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidInput);
    EXPECT_NE(std::string(e.what()).find("has ['y', 'OUTPUT__1']"), std::string::npos) << e.what();
  }
  try {
    encode_outputs("m", affine_io(), {}, {{torch::zeros({2}, torch::kComplexFloat)}}, &reply);
    FAIL() << "a complex output passed";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kModelError);
  }
}

namespace {

using Stub = grpc::TemplatedGenericStub<google::protobuf::Message, google::protobuf::Message>;

// One unary call; the status it ended with.
grpc::Status call(const std::shared_ptr<grpc::Channel>& ch, const std::string& method,
                  const google::protobuf::Message& request, google::protobuf::Message* reply,
                  double timeout_s = 30, const std::string& token = "") {
  Stub stub(ch);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::microseconds(static_cast<std::int64_t>(timeout_s * 1e6)));
  if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
  std::promise<grpc::Status> done;
  stub.UnaryCall(&ctx, "/inference.GRPCInferenceService/" + method, grpc::StubOptions(), &request,
                 reply, [&](grpc::Status s) { done.set_value(s); });
  return done.get_future().get();
}

struct Served {
  explicit Served(int iters = 0, std::optional<std::string> token = std::nullopt,
                  ForwardFn forward = nullptr)
      : rt(std::make_shared<Runtime>(RuntimeOptions{.device = "cpu"})) {
    rt->register_model(spec("affine", 8, 10000, from_ms(60000)), affine_module(iters), {sample(0)});
    rt->start();
    if (!forward) {
      forward = [](ForwardedCall, std::shared_ptr<Reply> reply) {
        (*reply)(5, "forwarded", "");  // NOT_FOUND
      };
    }
    frontend = std::make_unique<GrpcFrontend>(
        rt, GrpcFrontendOptions{"127.0.0.1:0", 1 << 20, std::move(token), 8}, std::move(forward));
    frontend->set_model("affine", affine_io());
    channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(frontend->port()),
                                  grpc::InsecureChannelCredentials());
  }
  ~Served() {
    frontend->stop(0);
    rt->shutdown(true);
  }
  std::shared_ptr<Runtime> rt;
  std::unique_ptr<GrpcFrontend> frontend;
  std::shared_ptr<grpc::Channel> channel;
};

}  // namespace

TEST(GrpcFrontend, InferRunsInTheCoreAndOtherCallsAreForwarded) {
  std::vector<std::thread> answering;
  std::mutex mu;
  std::vector<std::string> seen;
  Served s(0, std::nullopt, [&](ForwardedCall c, std::shared_ptr<Reply> reply) {
    std::lock_guard lock(mu);
    seen.push_back(c.method);
    if (c.method == "ServerReady") return;  // dropped unanswered: INTERNAL, never a hang
    if (c.method == "ModelInfer") return (*reply)(5, "no such model", "");
    answering.emplace_back([reply] {  // answered later, from another thread
      inference::ModelMetadataResponse m;
      m.set_name("affine");
      (*reply)(0, "", m.SerializeAsString());
      (*reply)(13, "a second answer is ignored", "");
    });
  });
  auto req = raw_request("INPUT__0", {3, 4}, torch::arange(12, torch::kFloat));
  req->set_model_name("affine");
  req->set_id("r1");
  inference::ModelInferResponse out;
  ASSERT_TRUE(call(s.channel, "ModelInfer", *req, &out).ok());
  EXPECT_EQ(out.id(), "r1");
  ASSERT_EQ(out.outputs(0).shape_size(), 2);
  const float* y = reinterpret_cast<const float*>(out.raw_output_contents(0).data());
  EXPECT_FLOAT_EQ(y[11], 23.0f);  // 11 * 2 + 1

  inference::ModelMetadataRequest mreq;
  inference::ModelMetadataResponse meta;
  ASSERT_TRUE(call(s.channel, "ModelMetadata", mreq, &meta).ok());
  EXPECT_EQ(meta.name(), "affine");
  inference::ServerReadyRequest rreq;
  inference::ServerReadyResponse ready;
  EXPECT_EQ(call(s.channel, "ServerReady", rreq, &ready).error_code(), grpc::StatusCode::INTERNAL);
  req->set_model_name("other");  // not served here: forwarded
  EXPECT_EQ(call(s.channel, "ModelInfer", *req, &out).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(call(s.channel, "Nope", rreq, &ready).error_code(), grpc::StatusCode::UNIMPLEMENTED);
  req->set_model_name("affine");
  req->set_model_version("2");
  EXPECT_EQ(call(s.channel, "ModelInfer", *req, &out).error_code(), grpc::StatusCode::NOT_FOUND);
  for (auto& t : answering) t.join();
  EXPECT_EQ(seen, (std::vector<std::string>{"ModelMetadata", "ServerReady", "ModelInfer"}));
}

TEST(GrpcFrontend, TheBearerTokenGuardsAllButHealth) {
  Served s(0, "s3cret");
  auto req = raw_request("INPUT__0", {1, 4}, torch::zeros({4}));
  req->set_model_name("affine");
  inference::ModelInferResponse out;
  EXPECT_EQ(call(s.channel, "ModelInfer", *req, &out).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(call(s.channel, "ModelInfer", *req, &out, 30, "s3cre").error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(call(s.channel, "ModelInfer", *req, &out, 30, "s3cret").ok());
  inference::ServerLiveRequest lreq;
  inference::ServerLiveResponse live;
  EXPECT_TRUE(call(s.channel, "ServerLive", lreq, &live).ok());
  EXPECT_TRUE(live.live());
}

TEST(GrpcFrontend, ClientDeadlinesRaceTheRuntimeAndStopEndsCallsInFlight) {
  Served s(5);  // a few ms per batch: calls overlap, deadlines land mid-batch
  auto req = raw_request("INPUT__0", {2, 4}, torch::ones({2, 4}));
  req->set_model_name("affine");
  std::atomic<int> ok{0}, failed{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 4; ++c) {
    clients.emplace_back([&, c] {
      for (int i = 0; i < 25; ++i) {
        inference::ModelInferResponse out;
        // Deadlines from 0.1 ms up: some expire queued, some running, some on the way back.
        grpc::Status st = call(s.channel, "ModelInfer", *req, &out, 1e-4 * (1 + (i * 7 + c) % 40));
        (st.ok() ? ok : failed)++;
        if (!st.ok()) {
          // Missed, cancelled, or shed by admission as one that cannot make its deadline.
          EXPECT_TRUE(st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
                      st.error_code() == grpc::StatusCode::CANCELLED ||
                      st.error_code() == grpc::StatusCode::UNAVAILABLE) << st.error_message();
        }
      }
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(ok + failed, 100);
  // Calls still in the runtime when the server stops: stop returns, their answers go nowhere.
  std::vector<std::thread> late;
  for (int c = 0; c < 4; ++c) {
    late.emplace_back([&] {
      inference::ModelInferResponse out;
      call(s.channel, "ModelInfer", *req, &out, 30);
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  s.frontend->stop(0);
  for (auto& t : late) t.join();
  s.rt->shutdown(true);
  EXPECT_EQ(s.rt->stats().at(0).in_flight, 0u);
}

namespace {

// A ModelStreamInfer call from a grpc++ callback client: writes every request, then closes its
// side; collects every answer; `cancel_after` > 0 cancels the call after that many answers.
class StreamClient final
    : public grpc::ClientBidiReactor<google::protobuf::Message, google::protobuf::Message> {
 public:
  StreamClient(const std::shared_ptr<grpc::Channel>& ch,
               std::vector<std::shared_ptr<inference::ModelInferRequest>> requests,
               int cancel_after = 0)
      : stub_(ch), requests_(std::move(requests)), cancel_after_(cancel_after) {
    stub_.PrepareBidiStreamingCall(&ctx_, "/inference.GRPCInferenceService/ModelStreamInfer",
                                   grpc::StubOptions(), this);
    StartRead(&in_);
    write_next();
    StartCall();
  }
  // Blocks until the call ends; its status.
  grpc::Status wait() { return done_.get_future().get(); }
  std::vector<inference::ModelStreamInferResponse> answers;  // in arrival order

 private:
  void write_next() {
    if (next_ < requests_.size()) {
      StartWrite(requests_[next_++].get());
    } else {
      StartWritesDone();
    }
  }
  void OnWriteDone(bool ok) override {
    if (ok) write_next();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;
    answers.push_back(in_);
    if (cancel_after_ > 0 && static_cast<int>(answers.size()) == cancel_after_) ctx_.TryCancel();
    StartRead(&in_);
  }
  void OnDone(const grpc::Status& s) override { done_.set_value(s); }

  Stub stub_;
  grpc::ClientContext ctx_;
  std::vector<std::shared_ptr<inference::ModelInferRequest>> requests_;
  std::size_t next_ = 0;
  const int cancel_after_;
  inference::ModelStreamInferResponse in_;
  std::promise<grpc::Status> done_;
};

}  // namespace

TEST(GrpcFrontend, AStreamAnswersEveryRequestOnceInBandErrorsIncluded) {
  Served s(1);
  std::vector<std::shared_ptr<inference::ModelInferRequest>> requests;
  for (int i = 0; i < 300; ++i) {  // past the 256 read ahead of their answers
    auto r = raw_request("INPUT__0", {1, 4}, torch::full({4}, static_cast<float>(i)));
    r->set_model_name(i % 50 == 7 ? "other" : "affine");  // "other": forwarded, NOT_FOUND
    if (i % 50 == 9) r->mutable_inputs(0)->set_shape(1, 5);  // refused here
    r->set_id(std::to_string(i));
    requests.push_back(std::move(r));
  }
  StreamClient client(s.channel, requests);
  ASSERT_TRUE(client.wait().ok());
  ASSERT_EQ(client.answers.size(), 300u);
  std::set<std::string> ids;
  int errors = 0;
  for (const auto& a : client.answers) {
    if (!a.error_message().empty()) {
      ++errors;
      continue;
    }
    const auto& r = a.infer_response();
    EXPECT_TRUE(ids.insert(r.id()).second) << "answered twice: " << r.id();
    const float* y = reinterpret_cast<const float*>(r.raw_output_contents(0).data());
    EXPECT_FLOAT_EQ(y[0], 2.0f * std::stof(r.id()) + 1.0f);
  }
  EXPECT_EQ(errors, 12);  // 6 forwarded to no model, 6 refused
  EXPECT_EQ(ids.size(), 288u);
}

TEST(GrpcFrontend, AStreamCancelledMidWayOrStoppedLeavesNothingBehind) {
  Served s(5);  // a few ms per batch: answers are still in the runtime when the client leaves
  std::vector<std::shared_ptr<inference::ModelInferRequest>> requests;
  for (int i = 0; i < 100; ++i) {
    auto r = raw_request("INPUT__0", {1, 4}, torch::ones({4}));
    r->set_model_name("affine");
    requests.push_back(std::move(r));
  }
  for (int round = 0; round < 3; ++round) {
    StreamClient client(s.channel, requests, /*cancel_after=*/5);
    const grpc::Status st = client.wait();  // CANCELLED, unless every answer beat the cancel
    EXPECT_TRUE(st.error_code() == grpc::StatusCode::CANCELLED || st.ok()) << st.error_message();
  }
  StreamClient open(s.channel, requests);  // the server stops while this one is mid-way
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  s.frontend->stop(0);
  open.wait();
  s.rt->shutdown(true);
  EXPECT_EQ(s.rt->stats().at(0).in_flight, 0u);
}
