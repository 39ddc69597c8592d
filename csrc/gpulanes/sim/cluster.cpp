#include "gpulanes/sim/cluster.h"

#include <algorithm>
#include <cmath>

#include "gpulanes/core/clock.h"
#include "gpulanes/core/error.h"

namespace gpulanes {

struct SimCluster::Running {
  int lane = -1;
  int gpu = -1;
  Batch batch;
  CoRunner self;
  TimeNs start = 0;
  double solo_ns = 0;    // noisy solo duration: the work to do, in solo nanoseconds
  double done_ns = 0;    // solo nanoseconds done so far
  double factor = 1.0;   // current slow-down
  TimeNs since = 0;      // when `factor` began to apply
  TimeNs end = 0;        // projected end at the current factor
  std::uint64_t version = 0;
  std::uint64_t seq = 0;
};

// A lane of a simulated GPU; hands its batches to the cluster.
class SimLane final : public Lane {
 public:
  SimLane(int index, SimCluster& cluster, std::string device, std::vector<char> serves)
      : index_(index), cluster_(cluster), device_(std::move(device)), serves_(std::move(serves)) {}
  int index() const override { return index_; }
  const std::string& kind() const override { return kind_; }
  std::string device() const override { return device_; }
  bool serves(int model) const override {
    return model >= 0 && model < static_cast<int>(serves_.size()) && serves_[model];
  }
  int device_index() const override { return cluster_.cfg_.lanes[index_].gpu; }
  int sms() const override { return cluster_.cfg_.lanes[index_].sms; }
  double sm_share() const override { return cluster_.reports_[index_].share; }
  void start(LaneListener* listener, const std::function<void()>& init) override {
    listener_ = listener;
    if (init) init();
  }
  void dispatch(Batch&& batch) override { cluster_.start(index_, std::move(batch)); }
  void stop() override {}
  LaneListener* listener() const { return listener_; }

 private:
  const int index_;
  SimCluster& cluster_;
  const std::string kind_ = "sim";
  const std::string device_;        // "gpu0/66sm"
  const std::vector<char> serves_;  // by model index
  LaneListener* listener_ = nullptr;
};

SimCluster::SimCluster(SimClusterConfig config) : cfg_(std::move(config)), rng_(cfg_.seed) {
  if (!cfg_.interference) cfg_.interference = make_no_interference();
  on_gpu_.assign(cfg_.gpus.size(), {});
  configure(cfg_.lanes);
}

void SimCluster::configure(std::vector<SimLaneSpec> lanes) {
  const int n_gpus = static_cast<int>(cfg_.gpus.size());
  const int n_models = static_cast<int>(cfg_.models.size());
  std::vector<int> sms_used(n_gpus, 0);
  std::vector<double> memory_used(n_gpus, 0);
  for (std::size_t l = 0; l < lanes.size(); ++l) {
    const SimLaneSpec& lane = lanes[l];
    const std::string where = "lane " + std::to_string(l);
    if (lane.gpu < 0 || lane.gpu >= n_gpus) {
      throw Error(ErrorCode::kInvalidInput, where + " is on GPU " + std::to_string(lane.gpu) +
                                                ", but there are " + std::to_string(n_gpus));
    }
    if (lane.sms < 1) throw Error(ErrorCode::kInvalidInput, where + " needs at least one SM");
    sms_used[lane.gpu] += lane.sms;
    for (int m : lane.models) {
      if (m < 0 || m >= n_models) throw Error(ErrorCode::kInvalidInput, where + ": unknown model");
      memory_used[lane.gpu] += cfg_.models[m].memory_mb() / 1024.0;
    }
  }
  for (int g = 0; g < n_gpus; ++g) {
    if (sms_used[g] > cfg_.gpus[g].sms) {
      throw Error(ErrorCode::kInvalidInput, "lanes on GPU " + std::to_string(g) + " take " +
                                                std::to_string(sms_used[g]) + " SMs; it has " +
                                                std::to_string(cfg_.gpus[g].sms));
    }
    if (memory_used[g] > cfg_.gpus[g].memory_gb) {
      throw Error(ErrorCode::kInvalidInput,
                  "the models placed on GPU " + std::to_string(g) + " need " +
                      std::to_string(memory_used[g]) + " GB; it has " +
                      std::to_string(cfg_.gpus[g].memory_gb) + " GB");
    }
  }
  cfg_.lanes = std::move(lanes);
  serves_.clear();
  profiles_.clear();
  reports_.clear();
  for (const SimLaneSpec& lane : cfg_.lanes) {
    const double share = static_cast<double>(lane.sms) / cfg_.gpus[lane.gpu].sms;
    std::vector<char> serves(n_models, 0);
    std::vector<LatencyProfile> profiles(n_models);
    for (int m : lane.models) {
      serves[m] = 1;
      profiles[m] = cfg_.models[m].profile_at(share);
    }
    serves_.push_back(std::move(serves));
    profiles_.push_back(std::move(profiles));
    reports_.push_back({lane.gpu, lane.sms, share, 0, 1.0, 1.0});
  }
  slowdown_sum_.assign(cfg_.lanes.size(), 0.0);
}

void SimCluster::set_layout(std::vector<SimLaneSpec> lanes) {
  if (!running_.empty()) {
    throw Error(ErrorCode::kInvalidInput, "the simulated layout changes only while no batch runs");
  }
  configure(std::move(lanes));
  lanes_.clear();  // the runtime asks make_lanes() for the new ones
}

SimCluster::~SimCluster() = default;

std::vector<std::unique_ptr<Lane>> SimCluster::make_lanes(const Clock& clock) {
  if (!clock_) t0_ = clock.now();  // drift is timed from the first layout
  clock_ = &clock;
  lanes_.clear();
  std::vector<std::unique_ptr<Lane>> out;
  for (std::size_t l = 0; l < cfg_.lanes.size(); ++l) {
    const SimLaneSpec& spec = cfg_.lanes[l];
    auto lane = std::make_unique<SimLane>(static_cast<int>(l), *this,
                                          "gpu" + std::to_string(spec.gpu) + "/" +
                                              std::to_string(spec.sms) + "sm",
                                          serves_[l]);
    lanes_.push_back(lane.get());
    out.push_back(std::move(lane));
  }
  return out;
}

const LatencyProfile* SimCluster::lane_profile(int lane, int model) const {
  if (!serves_[lane][model]) return nullptr;
  return &profiles_[lane][model];
}

void SimCluster::start(int lane, Batch&& batch) {
  const SimLaneSpec& spec = cfg_.lanes[lane];
  const ShareProfile& model = cfg_.models[batch.model];
  const double share = reports_[lane].share;
  const int b = static_cast<int>(batch.requests.size());
  auto owned = std::make_unique<Running>();
  Running* run = owned.get();
  run->lane = lane;
  run->gpu = spec.gpu;
  run->self = {batch.model, b, share, model.l2(b, share), model.dram(b, share)};
  run->start = clock_->now();
  run->since = run->start;
  double noise = 1.0;
  if (cfg_.noise_cv > 0) {
    // Lognormal with mean 1 and the given coefficient of variation.
    const double sigma2 = std::log1p(cfg_.noise_cv * cfg_.noise_cv);
    std::normal_distribution<double> normal(-sigma2 / 2, std::sqrt(sigma2));
    noise = std::exp(normal(rng_));
  }
  run->solo_ns = static_cast<double>(model.solo_ns(b, share)) * noise;
  run->seq = next_seq_++;
  run->batch = std::move(batch);
  running_.emplace(run->seq, std::move(owned));
  // Others on the GPU are brought up to now before the newcomer changes their factors.
  on_gpu_[spec.gpu].push_back(run);
  reschedule(spec.gpu);
}

void SimCluster::reschedule(int gpu) {
  const TimeNs now = clock_->now();
  std::vector<Running*>& runs = on_gpu_[gpu];
  for (Running* r : runs) {
    r->done_ns += static_cast<double>(now - r->since) / r->factor;
    r->since = now;
  }
  std::vector<CoRunner> others;
  for (Running* r : runs) {
    others.clear();
    for (Running* o : runs) {
      if (o != r) others.push_back(o->self);
    }
    r->factor = std::max(1.0, cfg_.interference->factor(r->self, others, now - t0_));
    const double left = std::max(0.0, r->solo_ns - r->done_ns);
    const TimeNs end = now + static_cast<DurationNs>(std::ceil(left * r->factor));
    if (end != r->end || r->version == 0) {
      r->end = end;
      ++r->version;
      events_.push({end, r->seq, r->version});
    }
  }
}

TimeNs SimCluster::next_end() const {
  // Stale events are dropped in finish_due(); one at the top only makes the driver wake early.
  return events_.empty() ? kNever : events_.top().end;
}

void SimCluster::finish_due() {
  const TimeNs now = clock_->now();
  while (!events_.empty() && events_.top().end <= now) {
    const Event e = events_.top();
    events_.pop();
    auto it = running_.find(e.seq);
    if (it == running_.end() || it->second->version != e.version) continue;  // stale
    std::unique_ptr<Running> owned = std::move(it->second);
    running_.erase(it);
    Running* r = owned.get();
    auto& runs = on_gpu_[r->gpu];
    runs.erase(std::find(runs.begin(), runs.end(), r));
    reschedule(r->gpu);  // the others speed up from now
    const double slowdown = r->solo_ns > 0 ? (now - r->start) / r->solo_ns : 1.0;
    SimLaneReport& rep = reports_[r->lane];
    rep.batches++;
    slowdown_sum_[r->lane] += slowdown;
    rep.mean_slowdown = slowdown_sum_[r->lane] / rep.batches;
    rep.max_slowdown = std::max(rep.max_slowdown, slowdown);
    BatchReport report;
    report.lane = r->lane;
    report.start = r->start;
    report.end = now;
    report.exec_ns = now - r->start;
    report.ok = true;
    report.predicted_ns = r->batch.predicted_ns;
    std::vector<Outcome> outcomes(r->batch.requests.size());
    Batch batch = std::move(r->batch);
    const int lane = r->lane;
    owned.reset();
    // May dispatch this lane's next batch (re-entering start()); the state above is consistent.
    lanes_[lane]->listener()->on_batch_finished(std::move(batch), std::move(outcomes), report);
  }
}

std::vector<SimLaneReport> SimCluster::lane_reports() const { return reports_; }

}  // namespace gpulanes
