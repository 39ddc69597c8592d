// Work a runtime cannot do on the thread that asks for it: shutting down (or destroying) a
// runtime from one of its own threads, e.g. in a done-callback, which must not join itself.
// Such work runs on a detached thread; join_background() lets interpreter exit wait for it.
#pragma once

#include <functional>

namespace gpulanes::bindings {

// Runs `work` on a new detached thread (without the GIL; `work` takes it if it needs it).
void run_in_background(std::function<void()> work);
// Waits up to `timeout_s` for every background job to end (call without the GIL); true if none
// is left.
bool join_background(double timeout_s);

}  // namespace gpulanes::bindings
