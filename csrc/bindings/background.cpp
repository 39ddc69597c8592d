#include "background.h"

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

namespace gpulanes::bindings {
namespace {

// Never destroyed: detached jobs may still end while static destructors run at exit.
struct Jobs {
  std::mutex mu;                // guards running
  std::condition_variable done;  // signalled when running drops
  int running = 0;              // jobs started and not yet ended
};

Jobs& jobs() {
  static Jobs* j = new Jobs;
  return *j;
}

}  // namespace

void run_in_background(std::function<void()> work) {
  Jobs& j = jobs();
  {
    std::lock_guard<std::mutex> lock(j.mu);
    ++j.running;
  }
  std::thread([work = std::move(work), &j] {
    try {
      work();
    } catch (...) {  // nobody is left to tell; the runtime it closed reports nothing more
    }
    {
      std::lock_guard<std::mutex> lock(j.mu);
      --j.running;
    }
    j.done.notify_all();
  }).detach();
}

bool join_background(double timeout_s) {
  Jobs& j = jobs();
  std::unique_lock<std::mutex> lock(j.mu);
  return j.done.wait_for(lock, std::chrono::duration<double>(timeout_s), [&] { return j.running == 0; });
}

}  // namespace gpulanes::bindings
