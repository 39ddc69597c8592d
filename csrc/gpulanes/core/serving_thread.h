// Which runtime, if any, the calling thread works for. A runtime marks its own threads (lane
// workers, the event loop, the planner) for their whole life; a call that would block until
// those threads make progress (waiting for a result, draining, joining) asks serving_runtime()
// first, so that a done-callback running on such a thread gets an error or a deferred action
// instead of waiting on itself. The mark is a plain thread_local: no ordering with other threads
// is needed, since a thread only ever reads its own.
#pragma once

namespace gpulanes {

// Marks the calling thread as one of `runtime`'s own, until the thread ends.
void mark_serving_thread(const void* runtime);
// The runtime the calling thread works for, or null.
const void* serving_runtime();

}  // namespace gpulanes
