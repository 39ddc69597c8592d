#include "gpulanes/runtime/deliverer.h"

#include <utility>

namespace gpulanes {

Deliverer::Deliverer(DeliveryHook hook, const std::function<void()>& on_thread)
    : hook_(std::move(hook)) {
  thread_ = std::thread([this, on_thread] {
    if (on_thread) on_thread();
    run();
  });
}

Deliverer::~Deliverer() { stop(); }

void Deliverer::post(std::vector<RequestPtr> requests, std::vector<Outcome> outcomes) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stop_) {
      pending_.push_back({std::move(requests), std::move(outcomes)});
      ++posted_;
      cv_.notify_one();
      return;
    }
  }
  std::vector<Pending> late;  // after stop(): nobody else will deliver it
  late.push_back({std::move(requests), std::move(outcomes)});
  deliver(late);
}

void Deliverer::flush() {
  std::unique_lock<std::mutex> lock(mu_);
  const std::uint64_t target = posted_;
  done_cv_.wait(lock, [&] { return delivered_ >= target; });
}

void Deliverer::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
}

void Deliverer::run() {
  std::vector<Pending> taken;
  std::size_t done = 0;  // posts the previous round delivered
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      delivered_ += done;
      done_cv_.notify_all();
      cv_.wait(lock, [&] { return stop_ || !pending_.empty(); });
      if (pending_.empty()) return;  // stopping, and nothing is left
      taken.swap(pending_);
    }
    deliver(taken);
    done = taken.size();
    // Not under mu_: what the requests hold may need the hook's context (the GIL) to go, and
    // a thread holding that may be waiting in post() for mu_.
    taken.clear();
  }
}

void Deliverer::deliver(std::vector<Pending>& batch) {
  hook_([&] {
    for (Pending& p : batch) {
      for (std::size_t i = 0; i < p.requests.size(); ++i) {
        p.requests[i]->complete(std::move(p.outcomes[i]));  // a no-op when already complete
      }
    }
  });
}

}  // namespace gpulanes
