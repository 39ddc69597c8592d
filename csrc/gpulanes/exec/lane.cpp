#include "gpulanes/exec/lane.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <exception>
#include <span>
#include <future>
#include <stdexcept>

#include "gpulanes/core/clock.h"
#include "gpulanes/core/error.h"
#include "gpulanes/core/error_text.h"
#include "gpulanes/exec/batching.h"

namespace gpulanes {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

}  // namespace

WorkerLane::WorkerLane(int index, std::string kind, std::unique_ptr<Executor> executor, const Clock& clock,
           DurationNs spin_ns, LanePlacement placement)
    : index_(index),
      kind_(std::move(kind)),
      executor_(std::move(executor)),
      clock_(clock),
      spin_ns_(spin_ns),
      placement_(std::move(placement)) {}

bool WorkerLane::serves(int model) const {
  std::lock_guard<std::mutex> lock(serves_mu_);
  const auto& s = placement_.serves;
  return s.empty() || (model >= 0 && model < static_cast<int>(s.size()) && s[model]);
}

std::vector<char> WorkerLane::serves_list() const {
  std::lock_guard<std::mutex> lock(serves_mu_);
  return placement_.serves;
}

void WorkerLane::relocate(int index, std::vector<char> serves) {
  index_.store(index, std::memory_order_relaxed);
  std::lock_guard<std::mutex> lock(serves_mu_);
  placement_.serves = std::move(serves);
}

double WorkerLane::sm_share() const {
  return placement_.device_sms > 0 ? static_cast<double>(placement_.sms) / placement_.device_sms : 1.0;
}

WorkerLane::~WorkerLane() { stop(); }

void WorkerLane::start(LaneListener* listener, const std::function<void()>& init) {
  listener_ = listener;
  // The worker owns the promise and its copy of `init`: start() may return (and unwind) while
  // set_value() is still finishing on the worker.
  auto ready = std::make_shared<std::promise<void>>();
  std::future<void> ready_f = ready->get_future();
  thread_ = std::thread([this, init, ready] {
    // As torch does for its own threads: set this thread's OpenMP/MKL thread counts.
    at::init_num_threads();
    try {
      init();
    } catch (...) {
      executor_->close();
      ready->set_exception(std::current_exception());
      return;
    }
    ready->set_value();
    worker();
    executor_->close();  // on this thread, before it ends (a worker process dies with it)
  });
  try {
    ready_f.get();
  } catch (...) {
    thread_.join();
    throw;
  }
}

void WorkerLane::dispatch(Batch&& batch) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (next_) throw std::logic_error("Lane::dispatch while a batch is pending");
    next_ = std::make_unique<Batch>(std::move(batch));
    has_next_.store(true, std::memory_order_release);
  }
  cv_.notify_one();
}

void WorkerLane::stop() {
  stopping_.store(true, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
}

void WorkerLane::worker() {
  while (true) {
    std::unique_ptr<Batch> batch;
    if (spin_ns_ > 0 && !has_next_.load(std::memory_order_acquire)) {
      // Steady clock, not clock_: spinning is about wall time even under a virtual clock.
      const auto until = std::chrono::steady_clock::now() + std::chrono::nanoseconds(spin_ns_);
      while (!has_next_.load(std::memory_order_acquire) && !stopping_.load(std::memory_order_relaxed) &&
             std::chrono::steady_clock::now() < until) {
        cpu_relax();
      }
    }
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return next_ != nullptr || stop_; });
      if (!next_) return;  // stopping and nothing left to run
      batch = std::move(next_);
      has_next_.store(false, std::memory_order_relaxed);
    }
    run_batch(std::move(*batch));
  }
}

void WorkerLane::run_batch(Batch&& batch) {
  BatchReport report;
  report.lane = index();
  report.start = clock_.now();
  report.predicted_ns = batch.predicted_ns;
  std::vector<Outcome> outcomes(batch.requests.size());
  run_part(batch, 0, batch.requests.size(), outcomes, report);
  report.end = clock_.now();
  listener_->on_batch_finished(std::move(batch), std::move(outcomes), report);
}

void WorkerLane::run_part(const Batch& batch, std::size_t lo, std::size_t hi,
                          std::vector<Outcome>& outcomes, BatchReport& report) {
  const std::span<const RequestPtr> part(batch.requests.data() + lo, hi - lo);
  std::string why;
  try {
    const TimeNs t0 = clock_.now();
    std::vector<c10::IValue> rows = executor_->run_requests(batch.model, part);
    if (lo == 0 && hi == batch.requests.size()) {
      report.exec_ns = clock_.now() - t0;
      if (const std::int64_t device_ns = executor_->last_device_ns(); device_ns > 0) {
        report.exec_ns = device_ns;
      }
      report.ok = true;
    }
    for (std::size_t i = lo; i < hi; ++i) outcomes[i] = Outcome::success(std::move(rows[i - lo]));
    return;
  } catch (const WorkerLost& e) {
    // No culprit search: each re-run would start a worker again, and the crash may not be
    // any one request's doing.
    for (std::size_t i = lo; i < hi; ++i) outcomes[i] = Outcome::failure(ErrorCode::kModelError, e.what());
    return;
  } catch (const std::exception& e) {
    // The model's failure is its requests' failure only; the lane keeps serving.
    const auto* typed = dynamic_cast<const Error*>(&e);
    why = typed ? e.what() : "forward() raised: " + error_text(e, 4000);
  }
  TimeNs latest = 0;
  for (const RequestPtr& r : part) latest = std::max(latest, r->deadline);
  if (hi - lo > 1 && clock_.now() < latest) {
    const std::size_t mid = lo + (hi - lo) / 2;
    report.reruns += 2;
    run_part(batch, lo, mid, outcomes, report);
    run_part(batch, mid, hi, outcomes, report);
    return;
  }
  for (std::size_t i = lo; i < hi; ++i) outcomes[i] = Outcome::failure(ErrorCode::kModelError, why);
}

}  // namespace gpulanes
