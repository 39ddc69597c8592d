// Typed errors of the public contract. The binding layer maps each ErrorCode to the Python
// exception of the same name (gpulanes.errors), so the codes here are the whole error vocabulary.
#pragma once

#include <stdexcept>
#include <string>

namespace gpulanes {

enum class ErrorCode {
  kOk = 0,
  kDeadlineExceeded,  // the deadline passed, or cannot be met, before the request ran
  kQueueFull,         // the model's queue is at max_queue
  kInvalidInput,      // wrong number, shape or dtype of inputs; bad arguments
  kUnknownModel,      // no model registered under that name
  kModelError,        // loading the model failed, or its forward raised
  kRuntimeClosed,     // submit after shutdown, or queued work failed by shutdown(drain=false)
                      // or unregister_model(drain=false)
  kOverloaded,        // shed by admission control: the plan cannot serve the model's whole rate
  kInternal,          // a bug in gpulanes
};

const char* error_code_name(ErrorCode code);

// Thrown by core entry points for refusals detected synchronously (e.g. at submit).
class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;  // which typed error this is
};

}  // namespace gpulanes
