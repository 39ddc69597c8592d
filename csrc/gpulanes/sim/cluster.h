// Simulated GPUs split into lanes: the simulator's VirtualBackend. A batch dispatched to a lane
// runs for its solo latency at the lane's SM share (from the model's ShareProfile) times
// seeded noise, stretched by interference: whenever the set of batches running on a GPU
// changes, every batch there gets a new slow-down factor from the InterferenceModel, which
// applies from that moment until the next change (a batch alone on its GPU runs at solo speed).
// Single-threaded, driven on virtual time like every VirtualBackend.
#pragma once

#include <cstdint>
#include <memory>
#include <queue>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "gpulanes/exec/virtual_backend.h"
#include "gpulanes/sim/interference.h"
#include "gpulanes/predict/share_profile.h"

namespace gpulanes {

struct SimGpuSpec {
  int sms = 132;            // streaming multiprocessors (H100 SXM: 132)
  double memory_gb = 80;    // device memory
};

struct SimLaneSpec {
  int gpu = 0;              // index into the GPUs
  int sms = 132;            // SMs this lane owns
  std::vector<int> models;  // model indices it serves
};

struct SimClusterConfig {
  std::vector<SimGpuSpec> gpus;
  std::vector<SimLaneSpec> lanes;
  std::vector<ShareProfile> models;            // by model index
  std::shared_ptr<InterferenceModel> interference;  // null: none
  double noise_cv = 0.0;    // batch durations x lognormal noise with this coefficient of variation
  std::uint64_t seed = 0;   // noise
};

// Per lane, what the simulator measured (beyond the runtime's lane metrics).
struct SimLaneReport {
  int gpu = 0;
  int sms = 0;
  double share = 1.0;
  std::uint64_t batches = 0;
  double mean_slowdown = 1.0;  // batch duration / its noisy solo duration, mean over batches
  double max_slowdown = 1.0;
};

class SimCluster final : public VirtualBackend {
 public:
  // Throws Error(kInvalidInput) for a lane on a missing GPU, lanes whose SMs exceed their GPU's,
  // models that do not fit a GPU's memory, or a model without a profile.
  explicit SimCluster(SimClusterConfig config);
  ~SimCluster() override;
  SimCluster(const SimCluster&) = delete;
  SimCluster& operator=(const SimCluster&) = delete;

  std::vector<std::unique_ptr<Lane>> make_lanes(const Clock& clock) override;
  const LatencyProfile* lane_profile(int lane, int model) const override;
  TimeNs next_end() const override;
  void finish_due() override;

  std::vector<SimLaneReport> lane_reports() const;
  // A new lane layout (validated like the first), for re-planning: only while no batch runs;
  // the runtime then takes the new lanes from make_lanes(). Per-lane reports restart.
  void set_layout(std::vector<SimLaneSpec> lanes);
  const std::vector<SimLaneSpec>& layout() const { return cfg_.lanes; }

 private:
  friend class SimLane;
  struct Running;
  struct Event {
    TimeNs end;
    std::uint64_t seq;      // the batch (running_ key); ties: earlier start first
    std::uint64_t version;  // stale when the batch is gone or its version differs
    bool operator>(const Event& o) const { return end != o.end ? end > o.end : seq > o.seq; }
  };
  // Validates `lanes` against the GPUs' SMs and memory and makes it the layout.
  void configure(std::vector<SimLaneSpec> lanes);
  // Called by a SimLane: `batch` starts now on `lane`.
  void start(int lane, Batch&& batch);
  // Brings every batch on `gpu` up to now, recomputes their factors and end times.
  void reschedule(int gpu);

  SimClusterConfig cfg_;
  const Clock* clock_ = nullptr;                      // set by make_lanes()
  TimeNs t0_ = 0;                                     // when serving began (drift reference)
  std::vector<class SimLane*> lanes_;                 // owned by the runtime
  std::vector<std::vector<LatencyProfile>> profiles_; // [lane][model]: solo profile at its share
  std::vector<std::vector<char>> serves_;             // [lane][model]
  std::unordered_map<std::uint64_t, std::unique_ptr<Running>> running_;  // by seq
  std::vector<std::vector<Running*>> on_gpu_;         // [gpu] -> running batches
  std::vector<SimLaneReport> reports_;                // [lane]
  std::vector<double> slowdown_sum_;                  // [lane]
  std::priority_queue<Event, std::vector<Event>, std::greater<Event>> events_;  // batch ends
  std::mt19937_64 rng_;                               // noise
  std::uint64_t next_seq_ = 0;
};

}  // namespace gpulanes
