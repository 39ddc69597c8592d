#include "gpulanes/core/error.h"
#include "gpulanes/core/error_text.h"

#include <c10/util/Exception.h>

namespace gpulanes {

const char* error_code_name(ErrorCode code) {
  switch (code) {
    case ErrorCode::kOk: return "Ok";
    case ErrorCode::kDeadlineExceeded: return "DeadlineExceeded";
    case ErrorCode::kQueueFull: return "QueueFull";
    case ErrorCode::kOverloaded: return "Overloaded";
    case ErrorCode::kInvalidInput: return "InvalidInput";
    case ErrorCode::kUnknownModel: return "UnknownModel";
    case ErrorCode::kModelError: return "ModelError";
    case ErrorCode::kRuntimeClosed: return "RuntimeClosed";
    case ErrorCode::kInternal: return "Internal";
  }
  return "Internal";
}

std::string error_text(const std::exception& e, std::size_t max_chars) {
  const auto* torch_error = dynamic_cast<const c10::Error*>(&e);
  std::string text = torch_error ? torch_error->what_without_backtrace() : e.what();
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  if (text.size() > max_chars) text = text.substr(0, max_chars) + " ...";
  return text;
}

}  // namespace gpulanes
