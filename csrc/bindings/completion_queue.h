// Outcomes of requests submitted from an asyncio event loop, handed to that loop without any
// other thread taking the GIL.
//
// The lane (or loop) thread that decides a request pushes its outcome here and, when the queue
// was empty, writes to an eventfd. The event loop watches the eventfd (loop.add_reader) and
// drains the queue on its own thread, where it already holds the GIL, resolving every asyncio
// future at once. Compared with the delivery thread (which takes the GIL, then posts each result
// to the loop with call_soon_threadsafe) this saves one thread wake-up and one GIL hand-over per
// burst of results.
//
// Lifetime: shared by the Python object and by every pending request's completion, so a push
// after the Python side is gone is harmless. Memory ordering: the mutex orders push() and
// drain(); the eventfd only wakes the reader, which always drains whatever is queued.
#pragma once

#include <cstdint>
#include <mutex>
#include <utility>
#include <vector>

#include "gpulanes/core/request.h"

namespace gpulanes::bindings {

class CompletionQueue {
 public:
  CompletionQueue();
  ~CompletionQueue();
  CompletionQueue(const CompletionQueue&) = delete;
  CompletionQueue& operator=(const CompletionQueue&) = delete;

  // The eventfd to watch for reading.
  int fd() const { return fd_; }
  // Any thread, no GIL: queues the outcome of request `token`; wakes the reader if needed.
  void push(std::uint64_t token, Outcome&& outcome);
  // The reader: everything queued so far (and clears the eventfd's count).
  std::vector<std::pair<std::uint64_t, Outcome>> drain();

 private:
  const int fd_;                                            // eventfd, non-blocking
  std::mutex mu_;                                           // guards done_
  std::vector<std::pair<std::uint64_t, Outcome>> done_;    // outcomes not drained yet
};

}  // namespace gpulanes::bindings
