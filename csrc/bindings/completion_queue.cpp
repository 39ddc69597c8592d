#include "completion_queue.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "gpulanes/core/error.h"

namespace gpulanes::bindings {

namespace {
int make_eventfd() {
  const int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) {
    throw Error(ErrorCode::kRuntimeClosed, "eventfd() failed: errno " + std::to_string(errno));
  }
  return fd;
}
}  // namespace

CompletionQueue::CompletionQueue() : fd_(make_eventfd()) {}

CompletionQueue::~CompletionQueue() { close(fd_); }

void CompletionQueue::push(std::uint64_t token, Outcome&& outcome) {
  bool was_empty;
  {
    std::lock_guard<std::mutex> lock(mu_);
    was_empty = done_.empty();
    done_.emplace_back(token, std::move(outcome));
  }
  if (was_empty) {
    // The reader drains everything it finds; one wake-up per burst is enough. A full counter
    // (EAGAIN) still leaves the fd readable, so the result is not needed.
    const std::uint64_t one = 1;
    [[maybe_unused]] const ssize_t n = write(fd_, &one, sizeof(one));
  }
}

std::vector<std::pair<std::uint64_t, Outcome>> CompletionQueue::drain() {
  std::uint64_t count;
  [[maybe_unused]] const ssize_t n = read(fd_, &count, sizeof(count));  // EAGAIN: nothing new
  std::vector<std::pair<std::uint64_t, Outcome>> out;
  std::lock_guard<std::mutex> lock(mu_);
  out.swap(done_);
  return out;
}

}  // namespace gpulanes::bindings
