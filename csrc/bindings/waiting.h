// How Python callers wait for a request without holding the GIL: infer() on a SyncSlot the
// completion fills, and Future.result() polling a ResolvedFlag before it blocks.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>

#include "gpulanes/core/request.h"
#include "gpulanes/core/time.h"

namespace gpulanes::bindings {

// Where a synchronous infer() waits for its outcome, without the GIL. Shared with the completion,
// which may run after the waiter gave up (timeout, Ctrl-C).
struct SyncSlot {
  std::mutex mu;
  std::condition_variable cv;
  std::atomic<bool> ready{false};
  Outcome outcome;

  void set(Outcome&& o) {
    {
      std::lock_guard<std::mutex> lock(mu);
      outcome = std::move(o);
      ready.store(true, std::memory_order_release);
    }
    cv.notify_one();
  }
};

enum class WaitResult { kReady, kTimeout, kInterrupted };

// Polls for `spin_ns`, then sleeps in short slices so that Ctrl-C (checked under the GIL between
// slices) interrupts a long wait. Called without the GIL.
WaitResult wait_for_slot(SyncSlot& slot, DurationNs spin_ns, std::optional<double> timeout_s);

// Set (after the future was resolved) so that a thread about to block in Future.result() can
// poll for it without the GIL instead of paying a thread wake-up.
struct ResolvedFlag {
  std::atomic<bool> done{false};

  // Polls up to `spin_us`; true when the future is resolved. Called without the GIL.
  bool poll(double spin_us) const {
    const auto until = std::chrono::steady_clock::now() + std::chrono::nanoseconds(from_us(spin_us));
    do {
      if (done.load(std::memory_order_acquire)) return true;
    } while (std::chrono::steady_clock::now() < until);
    return false;
  }
};

}  // namespace gpulanes::bindings
