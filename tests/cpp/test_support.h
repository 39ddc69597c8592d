// Helpers shared by the runtime and policy tests: small TorchScript modules, specs, and a
// collector of request outcomes.
#pragma once

#include <gtest/gtest.h>
#include <torch/script.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>

#include "gpulanes/runtime/runtime.h"

namespace gpulanes::testing {

// forward(x) = 2x + 1, after `iters` rounds of busy work (to make batches take time).
inline torch::jit::Module affine_module(int iters) {
  torch::jit::Module m("Affine");
  m.register_attribute("iters", c10::IntType::get(), iters);
  m.define(R"JIT(
    def forward(self, x):
        a = torch.ones(160, 160)
        for i in range(self.iters):
            a = torch.tanh(a @ a * 0.01)
        return x * 2.0 + 1.0 + a.sum() * 0.0
  )JIT");
  return m;
}

inline ModelSpec spec(const std::string& name, int max_batch = 8, std::size_t max_queue = 10000,
                      DurationNs slo = from_ms(5000)) {
  ModelSpec s;
  s.name = name;
  s.inputs = {TensorSpec{{4}, c10::kFloat}};
  s.slo = slo;
  s.max_batch_size = max_batch;
  s.max_queue = max_queue;
  return s;
}

inline at::Tensor sample(float v) { return torch::full({4}, v); }

// Collects outcomes by key and counts how often each key completed.
struct Collector {
  std::mutex mu;
  std::condition_variable cv;
  std::map<int, Outcome> outcomes;
  std::map<int, int> calls;

  CompletionFn fn(int key) {
    return [this, key](Outcome&& o) {
      std::lock_guard<std::mutex> lock(mu);
      outcomes[key] = std::move(o);
      calls[key]++;
      cv.notify_all();
    };
  }
  void wait_for(std::size_t n) {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(60), [&] { return outcomes.size() >= n; }));
  }
};

}  // namespace gpulanes::testing
