#include "gpulanes/core/serving_thread.h"

namespace gpulanes {
namespace {
thread_local const void* t_runtime = nullptr;  // set by mark_serving_thread on this thread
}  // namespace

void mark_serving_thread(const void* runtime) { t_runtime = runtime; }
const void* serving_runtime() { return t_runtime; }

}  // namespace gpulanes
