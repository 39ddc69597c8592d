#include "waiting.h"

#include <pybind11/pybind11.h>

#include <algorithm>

namespace py = pybind11;

namespace gpulanes::bindings {

WaitResult wait_for_slot(SyncSlot& slot, DurationNs spin_ns, std::optional<double> timeout_s) {
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  const auto spin_until = start + std::chrono::nanoseconds(spin_ns);
  while (clock::now() < spin_until) {
    if (slot.ready.load(std::memory_order_acquire)) return WaitResult::kReady;
  }
  // A timeout past ~30 years means none (and would overflow the clock's nanoseconds).
  const bool bounded = timeout_s && *timeout_s < 1e9;
  const auto deadline = bounded ? start + std::chrono::duration_cast<clock::duration>(
                                              std::chrono::duration<double>(*timeout_s))
                                : clock::time_point::max();
  std::unique_lock<std::mutex> lock(slot.mu);
  while (!slot.ready.load(std::memory_order_acquire)) {
    const auto slice = std::min(deadline, clock::now() + std::chrono::milliseconds(50));
    slot.cv.wait_until(lock, slice);
    if (slot.ready.load(std::memory_order_acquire)) break;
    if (clock::now() >= deadline) return WaitResult::kTimeout;
    lock.unlock();
    {
      py::gil_scoped_acquire gil;
      if (PyErr_CheckSignals() != 0) {
        PyErr_Clear();  // re-raised by the caller as KeyboardInterrupt once it holds the GIL
        return WaitResult::kInterrupted;
      }
    }
    lock.lock();
  }
  return WaitResult::kReady;
}

}  // namespace gpulanes::bindings
