#include "gpulanes/serve/kserve_infer.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include "gpulanes/core/string_tensor.h"

namespace gpulanes::serve {
namespace {

constexpr double kMaxTimeoutUs = 30.0 * 86400 * 1e6;  // the runtime's own bound on a deadline

struct Datatype {
  const char* name;
  at::ScalarType dtype;
};
constexpr Datatype kDatatypes[] = {
    {"BOOL", at::kBool},   {"UINT8", at::kByte},     {"INT8", at::kChar},  {"INT16", at::kShort},
    {"INT32", at::kInt},   {"INT64", at::kLong},     {"FP16", at::kHalf},  {"BF16", at::kBFloat16},
    {"FP32", at::kFloat},  {"FP64", at::kDouble},
    // torch >= 2.3 has unsigned 16-64 bit tensors (few operators work on them: a model that
    // takes them must not need more)
    {"UINT16", at::kUInt16}, {"UINT32", at::kUInt32}, {"UINT64", at::kUInt64},
    // strings (a TorchScript List[str] input): each row carries one, as a string tensor
    {"BYTES", kStringDtype},
};

[[noreturn]] void invalid(const std::string& why) { throw Error(ErrorCode::kInvalidInput, why); }

template <typename T>
std::string listed(const std::vector<T>& items) {
  std::ostringstream out;
  out << '[';
  for (std::size_t i = 0; i < items.size(); ++i) {
    if (i) out << ", ";
    if constexpr (std::is_same_v<T, std::string>) {
      out << py_repr(items[i]);
    } else {
      out << items[i];
    }
  }
  out << ']';
  return out.str();
}

std::string number(double v) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  std::string s(buf, end);
  if (s.find_first_of(".en") == std::string::npos) s += ".0";  // as Python's repr of a float
  return s;
}

// The value of a parameter as Python's repr shows it ("None" when its oneof is unset), and
// whether it is a non-bool number (with `value` set).
bool numeric(const inference::InferParameter& p, double* value, std::string* shown) {
  switch (p.parameter_choice_case()) {
    case inference::InferParameter::kInt64Param:
      *value = static_cast<double>(p.int64_param());
      *shown = std::to_string(p.int64_param());
      return true;
    case inference::InferParameter::kUint64Param:
      *value = static_cast<double>(p.uint64_param());
      *shown = std::to_string(p.uint64_param());
      return true;
    case inference::InferParameter::kDoubleParam:
      *value = p.double_param();
      *shown = number(p.double_param());  // nan and inf fail the range checks
      return true;
    case inference::InferParameter::kBoolParam:
      *shown = p.bool_param() ? "True" : "False";
      return false;
    case inference::InferParameter::kStringParam:
      *shown = py_repr(p.string_param());
      return false;
    default:
      *shown = "None";
      return false;
  }
}

void read_parameters(const inference::ModelInferRequest& request, DecodedInfer* out) {
  const auto& params = request.parameters();
  // A request of a sequence (Triton's sequence batcher: state kept per sequence) is refused, not
  // served as if it were stateless; as protocol.request_options in Python.
  for (const char* key : {"sequence_id", "sequence_start", "sequence_end"}) {
    auto it = params.find(key);
    if (it == params.end()) continue;
    const auto& p = it->second;
    bool set = false;
    switch (p.parameter_choice_case()) {
      case inference::InferParameter::kInt64Param: set = p.int64_param() != 0; break;
      case inference::InferParameter::kUint64Param: set = p.uint64_param() != 0; break;
      case inference::InferParameter::kBoolParam: set = p.bool_param(); break;
      case inference::InferParameter::kStringParam: set = !p.string_param().empty(); break;
      case inference::InferParameter::kDoubleParam: set = p.double_param() != 0; break;
      default: break;
    }
    if (set) {
      invalid(std::string("parameters.") + key + ": sequences (stateful models, Triton's sequence "
              "batcher) are not served by gpulanes: send requests without them");
    }
  }
  if (auto it = params.find("timeout"); it != params.end() &&
      it->second.parameter_choice_case() != inference::InferParameter::PARAMETER_CHOICE_NOT_SET) {
    double us = 0;
    std::string shown;
    if (!numeric(it->second, &us, &shown) || !(us > 0 && us <= kMaxTimeoutUs)) {
      invalid("parameters.timeout must be > 0 and at most 30 days in microseconds, got " + shown);
    }
    out->timeout_ms = us / 1000.0;
  }
  if (auto it = params.find("priority"); it != params.end()) {
    const auto& p = it->second;
    double value = 0;
    std::string shown;
    const bool integer = p.parameter_choice_case() == inference::InferParameter::kInt64Param ||
                         p.parameter_choice_case() == inference::InferParameter::kUint64Param;
    if (!numeric(p, &value, &shown) || !integer || value < 0) {
      invalid("parameters.priority must be an integer >= 0, got " + shown);
    }
    out->priority = value <= 1 ? 0 : 1;  // Triton's default and highest level: latency-critical
  }
}

// Checks one input's datatype and shape ([rows, *sample]) against the model.
void check_shape(const inference::ModelInferRequest_InferInputTensor& t, at::ScalarType dtype,
                 const std::vector<std::int64_t>& sample, int max_rows) {
  const std::string name = py_repr(t.name());
  if (t.datatype() != datatype_name(dtype)) {
    invalid("input " + name + " has datatype " + py_repr(t.datatype()) + "; the model takes " +
            datatype_name(dtype));
  }
  std::vector<std::int64_t> shape(t.shape().begin(), t.shape().end());
  if (shape.empty() || std::any_of(shape.begin(), shape.end(), [](auto d) { return d < 0; })) {
    invalid("input " + name + ": shape must be a non-empty list of sizes, got " + listed(shape));
  }
  if (!std::equal(shape.begin() + 1, shape.end(), sample.begin(), sample.end()) || shape[0] < 1) {
    std::vector<std::string> wanted{"batch >= 1"};
    for (auto d : sample) wanted.push_back(std::to_string(d));
    std::string w;
    for (std::size_t i = 0; i < wanted.size(); ++i) w += (i ? ", " : "") + wanted[i];
    invalid("input " + name + " has shape " + listed(shape) + "; the model takes [" + w + "]");
  }
  if (shape[0] > max_rows) {
    invalid("input " + name + " has " + std::to_string(shape[0]) +
            " rows; a request may carry at most " + std::to_string(max_rows));
  }
}

template <typename T, typename Field>
at::Tensor from_field(const Field& values, at::IntArrayRef shape, at::ScalarType dtype,
                      const std::string& name, const char* datatype) {
  at::Tensor out = at::empty(shape, at::TensorOptions().dtype(dtype));
  T* dst = static_cast<T*>(out.data_ptr());  // untyped: data_ptr<uint16_t> and kin may not exist
  for (int i = 0; i < values.size(); ++i) {
    const auto v = values.Get(i);
    if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
      if (v < std::numeric_limits<T>::min() || v > std::numeric_limits<T>::max()) {
        invalid("input " + name + ": values do not fit " + datatype + ": " + std::to_string(v) +
                " is out of range");
      }
    }
    dst[i] = static_cast<T>(v);
  }
  return out;
}

// An input given as typed `contents` (no raw bytes).
at::Tensor from_contents(const inference::ModelInferRequest_InferInputTensor& t,
                         at::IntArrayRef shape, at::ScalarType dtype) {
  const auto& c = t.contents();
  const std::string name = py_repr(t.name());
  const std::int64_t want = c10::multiply_integers(shape);
  auto count = [&](int n, const char* field) {
    if (n != want) {
      invalid("input " + name + ": " + std::to_string(n) + " values in contents." + field +
              " for shape " + listed(shape.vec()) + " (" + std::to_string(want) + " expected)");
    }
  };
  const char* dt = t.datatype().c_str();
  if (dtype == kStringDtype) {
    count(c.bytes_contents_size(), "bytes_contents");
    std::vector<std::string_view> strings(c.bytes_contents().begin(), c.bytes_contents().end());
    return pack_strings(strings);
  }
  switch (dtype) {
    case at::kBool: count(c.bool_contents_size(), "bool_contents");
      return from_field<bool>(c.bool_contents(), shape, dtype, name, dt);
    case at::kChar: count(c.int_contents_size(), "int_contents");
      return from_field<std::int8_t>(c.int_contents(), shape, dtype, name, dt);
    case at::kShort: count(c.int_contents_size(), "int_contents");
      return from_field<std::int16_t>(c.int_contents(), shape, dtype, name, dt);
    case at::kInt: count(c.int_contents_size(), "int_contents");
      return from_field<std::int32_t>(c.int_contents(), shape, dtype, name, dt);
    case at::kLong: count(c.int64_contents_size(), "int64_contents");
      return from_field<std::int64_t>(c.int64_contents(), shape, dtype, name, dt);
    case at::kByte: count(c.uint_contents_size(), "uint_contents");
      return from_field<std::uint8_t>(c.uint_contents(), shape, dtype, name, dt);
    case at::kUInt16: count(c.uint_contents_size(), "uint_contents");
      return from_field<std::uint16_t>(c.uint_contents(), shape, dtype, name, dt);
    case at::kUInt32: count(c.uint_contents_size(), "uint_contents");
      return from_field<std::uint32_t>(c.uint_contents(), shape, dtype, name, dt);
    case at::kUInt64: count(c.uint64_contents_size(), "uint64_contents");
      return from_field<std::uint64_t>(c.uint64_contents(), shape, dtype, name, dt);
    case at::kFloat: count(c.fp32_contents_size(), "fp32_contents");
      return from_field<float>(c.fp32_contents(), shape, dtype, name, dt);
    case at::kDouble: count(c.fp64_contents_size(), "fp64_contents");
      return from_field<double>(c.fp64_contents(), shape, dtype, name, dt);
    default:
      invalid("input " + name + ": " + t.datatype() + " must come in raw_input_contents");
  }
}

}  // namespace

std::string py_repr(const std::string& s) {
  // Python's repr picks double quotes only for a string holding ' and no ".
  const char q = s.find('\'') != std::string::npos && s.find('"') == std::string::npos ? '"' : '\'';
  std::string out(1, q);
  for (char ch : s) {
    if (ch == q || ch == '\\') out += '\\';
    out += ch;
  }
  return out + q;
}

const char* datatype_name(at::ScalarType dtype) {
  for (const auto& d : kDatatypes) {
    if (d.dtype == dtype) return d.name;
  }
  return "";
}

std::optional<at::ScalarType> datatype_from(const std::string& name) {
  for (const auto& d : kDatatypes) {
    if (name == d.name) return d.dtype;
  }
  return std::nullopt;
}

DecodedInfer decode_infer(const std::string& model_name, const ServedModel& model,
                          const std::shared_ptr<inference::ModelInferRequest>& request,
                          int max_rows) {
  auto& req = *request;
  std::map<std::string, int> given;  // input name -> index in the request
  for (int i = 0; i < req.inputs_size(); ++i) {
    if (!given.emplace(req.inputs(i).name(), i).second) {
      invalid("input " + py_repr(req.inputs(i).name()) + " is given twice");
    }
  }
  std::vector<std::string> unknown, missing;
  for (const auto& [name, i] : given) {
    if (std::find(model.input_names.begin(), model.input_names.end(), name) ==
        model.input_names.end()) {
      unknown.push_back(name);
    }
  }
  if (!unknown.empty()) {
    std::sort(unknown.begin(), unknown.end(), [&](auto& a, auto& b) { return given[a] < given[b]; });
    invalid("unknown input(s) " + listed(unknown) + "; " + py_repr(model_name) + " takes " +
            listed(model.input_names));
  }
  for (const auto& name : model.input_names) {
    if (!given.count(name)) missing.push_back(name);
  }
  if (!missing.empty()) {
    invalid("missing input(s) " + listed(missing) + "; " + py_repr(model_name) + " takes " +
            listed(model.input_names));
  }
  const int raw = req.raw_input_contents_size();
  if (raw != 0 && raw != req.inputs_size()) {
    invalid("raw_input_contents has " + std::to_string(raw) + " entries for " +
            std::to_string(req.inputs_size()) + " inputs");
  }
  // Refused as HTTP refuses them (protocol.py): data given twice, and an extension not served.
  for (const auto& t : req.inputs()) {
    if (raw != 0 && t.has_contents() && t.contents().ByteSizeLong() > 0) {
      invalid("input " + py_repr(t.name()) +
              " has typed contents and raw_input_contents: give its data one way");
    }
  }
  for (const auto& o : req.outputs()) {
    if (o.parameters().count("classification")) {
      invalid("the classification extension is not supported (output " + py_repr(o.name()) + ")");
    }
  }

  std::vector<at::Tensor> batch;  // per model input, [rows, *sample]
  std::set<std::int64_t> row_counts;
  for (std::size_t k = 0; k < model.input_names.size(); ++k) {
    const int i = given[model.input_names[k]];
    const auto& t = req.inputs(i);
    const at::ScalarType dtype = model.input_dtypes[k];
    check_shape(t, dtype, model.samples[k], max_rows);
    std::vector<std::int64_t> shape(t.shape().begin(), t.shape().end());
    at::Tensor x;
    if (raw != 0 && dtype == kStringDtype) {
      std::string* bytes = req.mutable_raw_input_contents(i);
      // A view of the message's bytes, which are already in the string tensor's form.
      x = at::from_blob(bytes->data(), {static_cast<std::int64_t>(bytes->size())},
                        [keep = request](void*) {}, at::TensorOptions().dtype(dtype));
    } else if (raw != 0) {
      std::string* bytes = req.mutable_raw_input_contents(i);
      const std::int64_t need = c10::multiply_integers(shape) *
                                static_cast<std::int64_t>(c10::elementSize(dtype));
      if (static_cast<std::int64_t>(bytes->size()) != need) {
        invalid("input " + py_repr(t.name()) + ": " + std::to_string(bytes->size()) +
                " bytes of binary data; shape " + listed(shape) + " of " + t.datatype() +
                " needs " + std::to_string(need));
      }
      if (need == 0) {
        x = at::empty(shape, at::TensorOptions().dtype(dtype));
      } else {
        // A view of the message's bytes (no copy): the request lives as long as the tensor.
        x = at::from_blob(bytes->data(), shape, [keep = request](void*) {},
                          at::TensorOptions().dtype(dtype));
      }
    } else {
      x = from_contents(t, shape, dtype);
    }
    if (dtype == kStringDtype) {
      const std::size_t n = count_strings(x, "input " + py_repr(t.name()));
      const std::int64_t want = c10::multiply_integers(shape);
      if (static_cast<std::int64_t>(n) != want) {
        invalid("input " + py_repr(t.name()) + ": " + std::to_string(n) + " strings for shape " +
                listed(shape) + " (" + std::to_string(want) + " expected)");
      }
    }
    row_counts.insert(shape[0]);
    batch.push_back(std::move(x));
  }
  if (batch.empty()) {  // a model without inputs: no rows to serve, and none would answer
    invalid("model " + py_repr(model_name) + " takes no inputs; KServe v2 requests carry rows");
  }
  if (row_counts.size() > 1) {
    invalid("inputs disagree on the batch size: " +
            listed(std::vector<std::int64_t>(row_counts.begin(), row_counts.end())));
  }

  DecodedInfer out;
  read_parameters(req, &out);
  for (const auto& o : req.outputs()) out.requested.push_back(o.name());
  const std::int64_t rows = *row_counts.begin();
  out.rows.resize(rows);
  for (std::int64_t r = 0; r < rows; ++r) {
    for (auto& x : batch) {
      // a BYTES input's shape is [rows, 1]: row r is string r
      out.rows[r].push_back(is_string_tensor(x) ? slice_strings(x, r, 1) : x.select(0, r));
    }
  }
  return out;
}

void encode_outputs(const std::string& model_name, const ServedModel& model,
                    const std::vector<std::string>& requested,
                    const std::vector<std::vector<at::Tensor>>& rows,
                    inference::ModelInferResponse* reply) {
  const std::size_t count = rows.at(0).size();
  std::vector<std::string> names(model.output_names.begin(),
                                 model.output_names.begin() +
                                     std::min(count, model.output_names.size()));
  for (std::size_t k = names.size(); k < count; ++k) names.push_back("OUTPUT__" + std::to_string(k));
  for (std::size_t k = 0; k < count; ++k) {
    const at::ScalarType dtype = rows[0][k].scalar_type();
    if (*datatype_name(dtype) == '\0') {
      throw Error(ErrorCode::kModelError, "output " + py_repr(names[k]) + " has dtype " +
                                              std::string(c10::toString(dtype)) +
                                              ", which KServe v2 cannot carry");
    }
  }
  std::vector<std::size_t> chosen;
  if (requested.empty()) {
    for (std::size_t k = 0; k < count; ++k) chosen.push_back(k);
  } else {
    std::vector<std::string> unknown;
    for (const auto& r : requested) {
      auto it = std::find(names.begin(), names.end(), r);
      if (it == names.end()) {
        unknown.push_back(r);
      } else {
        chosen.push_back(it - names.begin());
      }
    }
    if (!unknown.empty()) {
      invalid("unknown output(s) " + listed(unknown) + "; " + py_repr(model_name) + " has " +
              listed(names));
    }
  }
  for (std::size_t k : chosen) {
    std::vector<at::Tensor> column;
    for (const auto& row : rows) {
      if (row.size() != count) {
        throw Error(ErrorCode::kModelError, "rows of one request returned different outputs");
      }
      column.push_back(row[k]);
    }
    auto* o = reply->add_outputs();
    if (is_string_tensor(column[0])) {  // one string per row: BYTES of shape [rows, 1]
      o->set_name(names[k]);
      o->set_datatype("BYTES");
      o->add_shape(static_cast<std::int64_t>(column.size()));
      o->add_shape(1);
      std::string* raw = reply->add_raw_output_contents();
      for (const at::Tensor& s : column) {
        raw->append(static_cast<const char*>(s.const_data_ptr()), s.nbytes());
      }
      continue;
    }
    at::Tensor t = (column.size() == 1 ? column[0].unsqueeze(0) : at::stack(column))
                       .to(at::kCPU)
                       .contiguous();
    o->set_name(names[k]);
    o->set_datatype(datatype_name(t.scalar_type()));
    for (auto d : t.sizes()) o->add_shape(d);
    reply->add_raw_output_contents(static_cast<const char*>(t.const_data_ptr()), t.nbytes());
  }
}

}  // namespace gpulanes::serve
