#include "gpulanes/core/error.h"

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

}  // namespace gpulanes
