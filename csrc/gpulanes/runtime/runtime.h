// The Runtime facade: registers models, creates lanes for the chosen device, runs the event loop
// and accounts every request. It owns the models, the queues, the lanes, the loop and the
// metrics. Threads: any thread may submit() and read stats(); register/start/shutdown are control
// calls (serialized internally); lane workers and the loop call back into it through the
// LaneListener / LoopSink interfaces, never holding a core lock.
//
// Contract for completions: if submit() throws, `done` is never called; otherwise it is called
// exactly once: a native one on the lane worker or loop thread that decided it, any other
// through the delivery hook on the runtime's delivery thread (on virtual time, on the deciding
// thread).
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

#include "gpulanes/core/clock.h"
#include "gpulanes/exec/executor.h"
#include "gpulanes/exec/virtual_backend.h"
#include "gpulanes/exec/virtual_lane.h"
#include "gpulanes/metrics/lane_metrics.h"
#include "gpulanes/metrics/model_metrics.h"
#include "gpulanes/metrics/trace.h"
#include "gpulanes/model/program.h"
#include "gpulanes/runtime/deliverer.h"
#include "gpulanes/plan/arrival_shape.h"
#include "gpulanes/plan/replanner.h"
#include "gpulanes/runtime/event_loop.h"
#include "gpulanes/sched/admission.h"
#include "gpulanes/sim/plan_check.h"
#include "gpulanes/predict/share_profile.h"

namespace torch::jit { struct Module; }

namespace gpulanes {

struct RuntimeOptions {
  std::string device = "auto";    // "auto" (CUDA if usable, else CPU), "cpu", "cuda", "cuda:N",
                                  // "virtual" (simulated time, no forward passes: lanes come
                                  // from virtual_backend, or are VirtualLanes)
  std::string policy = "deadline";
  std::string partitioning = "auto";  // GPU lanes smaller than a GPU: "green" (green contexts),
                                      // "streams" (no SM limit), "none" (one lane per GPU),
                                      // "auto" (green where supported, else streams)
  PolicyConfig policy_config;     // the policy's knobs
  int cpu_lanes = 1;              // lanes when running on the CPU
  std::string isolation = "thread";  // "process": each lane runs its batches in a worker
                                     // process (gpulanes_worker), which may crash alone
  std::string worker_path;           // that executable (process and MPS lanes)
  double worker_watchdog_s = 60;     // a batch running longer: its worker is killed
  double worker_start_timeout_s = 20;  // a worker not ready after this: killed (MPS clients hang)
  int worker_max_restarts = 5;       // worker deaths in a row before a lane gives up
  std::vector<std::string> worker_libraries;  // shared libraries (custom operators) each worker
                                              // loads before any model
  double worker_retry_after_s = 30;  // a lane that gave up tries a new worker after this
  double worker_spin_us = 0;         // lane and worker poll this long for each other's next
                                     // message before sleeping (pays only with spare cores)
  std::string layout_changes = "incremental";  // registering or unregistering a model while
                                     // serving: "incremental" changes only the lanes' models
                                     // (the new one loaded, warmed up and measured on the
                                     // serving lanes) where their executors allow it (CPU
                                     // thread lanes); "rebuild" builds every lane anew with
                                     // every model (and is what other lanes still do)
  bool outputs_on_device = false; // CUDA lanes: leave outputs on the GPU
  int warmup_rounds = 2;          // forward passes per (lane, model, batch size) at start()
  double spin_us = 50;            // idle lane polls this long for work before sleeping
  int profile_reps = 10;          // timed runs per batch size when profiling at start()
  double profile_budget_s = 0.5;  // ...but at most this long per batch size (>= 3 runs)
  bool trace = false;             // record every request (trace())
  std::shared_ptr<VirtualBackend> virtual_backend;  // device "virtual": the lanes, if set
  int virtual_lanes = 1;                   // else that many VirtualLanes with...
  VirtualLane::LatencyFn virtual_latency;  // ...this batch duration by (model, size)
  PredictorConfig predictor;      // interference-aware latency prediction (kind "none": off)
  ReplanOptions replan;           // every_s > 0: a planner thread re-plans the lanes while serving
  // Called once per accepted request when its outcome is decided (met, missed, dropped, failed),
  // on the thread that decided it, with no core lock held and before its completion runs.
  std::function<void(const Request&, TraceOutcome, TimeNs end)> on_finished;
};

// Progress of start(): `done` of `total` steps, `what` names the current one.
using ProgressFn = std::function<void(int done, int total, const std::string& what)>;

// One lane of a layout: where it runs and which models it serves.
struct LaneSpec {
  std::string device = "cpu";       // "cpu" or "cuda:N"
  int sms = 0;                      // SMs of its GPU partition; 0: the whole device
  std::vector<std::string> models;  // empty: every registered model
};

// The lane a model's own latency profile was measured on: the whole device (sm_share 1), or a
// GPU partition lane when no whole-device lane served the model.
struct ProfileOrigin {
  std::string lane_kind;  // "cpu", "cuda-stream", "cuda-green"; "" for a given profile
  int sms = 0;            // SMs of that lane when it was a partition, else 0
  double sm_share = 1.0;  // its share of the device's SMs
};

struct LaneInfo {
  int index;
  std::string kind;                 // "cpu", "cuda-stream", "sim", ...
  std::string device;               // "cpu", "cuda:0", "gpu0/66sm"
  int sms;                          // SMs it owns (0 on the CPU)
  std::vector<std::string> models;  // the models it serves
  int worker_pid = 0;               // process lanes: the worker's pid (0: none running)
  int worker_restarts = 0;          // ...workers started after the first
  bool broken = false;              // ...gave up: its batches fail at once
  int mps_thread_percentage = 0;    // MPS lanes: the worker's CUDA_MPS_ACTIVE_THREAD_PERCENTAGE
  std::string mps_pipe_dir;         // ...and the daemon's pipe directory it connects to
  int loads = 0;                    // model instances loaded on it over its life
};

class Runtime final : private LaneListener, private LoopSink {
 public:
  explicit Runtime(RuntimeOptions options, std::shared_ptr<Clock> clock = nullptr);
  ~Runtime() override;
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // `example` holds one sample per input (no batch dimension). While serving, the model is
  // added to every lane of the layout (the default layout: every lane serves every model): new
  // lanes load and warm up all their models and measure the new one's profile while the old
  // lanes keep serving, then take over as in set_lanes(); submit() knows the model only once
  // that is done. A model whose warm-up fails is refused with Error(kModelError) and leaves no
  // trace. Not on virtual time. `program` is the loaded model in any format.
  int register_model(ModelSpec spec, std::shared_ptr<const ModelProgram> program,
                     std::vector<at::Tensor> example);
  // A TorchScript module (on the CPU).
  int register_model(ModelSpec spec, torch::jit::Module module, std::vector<at::Tensor> example);
  // Stops accepting `name` (submit: kUnknownModel), lets its queued requests run (drain) or
  // fails them with kRuntimeClosed, waits until none is in flight, then builds lanes without it
  // while the others keep serving and swaps them in as set_lanes() does: what the old lanes
  // loaded for it is freed when they stop. A lane that served only it goes. Its statistics go
  // from stats(); the name may be registered again. Throws Error(kUnknownModel),
  // Error(kInvalidInput) on one of this runtime's own threads or on virtual time once started.
  void unregister_model(const std::string& name, bool drain);
  // Before start(), device "virtual" only: a model without weights (nothing runs). If its spec
  // has no inputs, requests carry none.
  int register_virtual_model(ModelSpec spec);
  // Before start() only.
  void set_delivery_hook(DeliveryHook hook);
  // The lane layout. Before start(): the lanes start() creates (instead of options.cpu_lanes CPU
  // lanes or one lane per GPU). While serving: builds and warms up the new lanes, stops handing
  // out batches, lets running ones finish, swaps the layout in and resumes; queued requests stay
  // queued (per-lane statistics restart). A model no lane serves is refused at submit. Throws
  // Error(kInvalidInput) for an unknown model or device, and on virtual time.
  void set_lanes(std::vector<LaneSpec> layout);
  // Before start() only: use this latency profile for `model` instead of measuring one; with
  // `sms` > 0, the profile of GPU partition lanes of that many SMs (e.g. from a profile cache).
  void set_profile(const std::string& model, const std::vector<LatencyPoint>& points, int sms = 0);
  // Creates lanes, loads every model onto each and warms them up, measures the latency profile
  // of every model that has none (on the first lane), starts the loop. Throws Error(kModelError)
  // if a model fails its warm-up forward.
  void start(const ProgressFn& progress = nullptr);

  // Validates and queues one request. `deadline` is absolute (CLOCK_MONOTONIC ns); none means
  // now + the model's SLO. Throws Error: kUnknownModel, kInvalidInput, kDeadlineExceeded (already
  // past), kQueueFull, kRuntimeClosed (not started or shut down).
  // `native`: `done` is safe to call outside the delivery hook (it touches no host runtime,
  // e.g. it wakes a C++ waiter), so a batch of such requests is delivered without the hook.
  void submit(const std::string& model, std::vector<at::Tensor> inputs,
              std::optional<TimeNs> deadline, int priority, CompletionFn done,
              bool native = false);
  // submit() refusing with a code instead of throwing (kOk: accepted; else `*why`, if given,
  // says why). For drivers that submit millions of requests.
  ErrorCode try_submit(const std::string& model, std::vector<at::Tensor> inputs,
                       std::optional<TimeNs> deadline, int priority, CompletionFn done,
                       bool native = false, std::string* why = nullptr);
  // By model index: only for a driver that registers nothing while submitting (the simulator),
  // since an unregistered model's index is reused by a later registration.
  ErrorCode try_submit(int model, std::vector<at::Tensor> inputs, std::optional<TimeNs> deadline,
                       int priority, CompletionFn done, bool native = false,
                       std::string* why = nullptr);
  // Index of `model`, or -1.
  int model_index(const std::string& model) const { return models_.find(model); }
  // By model index (slot): the live model's name; an unregistered one's only with
  // `unregistered`, else "" (so that rates by index leave it out).
  std::vector<std::string> model_names(bool unregistered) const;
  // The trace (trace()) with the names of the models its records name by index: slots, and
  // for records of a model whose slot was reused since, the aliases they were moved to.
  std::pair<std::vector<TraceRecord>, std::map<int, std::string>> named_trace() const;

  // Counts a submission the caller refused before it could reach submit() (e.g. an input that
  // is not a tensor) as submitted + rejected, then throws Error(code, why).
  [[noreturn]] void refuse(const std::string& model, ErrorCode code, const std::string& why);

  // Closes submission, then finishes (drain) or fails with RuntimeClosed (no drain) all queued
  // requests, waits for running batches and joins every thread. Idempotent. Must not be called
  // on one of the runtime's own threads (serving_runtime() == this): it would join itself.
  void shutdown(bool drain);
  // Refuses new requests from now on (RuntimeClosed) without waiting for anything: what a
  // runtime's own thread may do at once before shutdown() runs elsewhere.
  void close_submission() { accepting_.store(false, std::memory_order_release); }

  std::vector<ModelStats> stats() const;
  // Per lane (empty before start()).
  std::vector<LaneStats> lane_stats() const;
  // Every finished request so far, when options.trace is on (empty otherwise).
  std::vector<TraceRecord> trace() const { return trace_.snapshot(); }
  std::vector<LaneInfo> lanes() const;
  // Model instances loaded on lanes so far: one per (lane, model) at start(), and what every
  // later change (register, unregister, set_lanes, a re-plan) loaded.
  std::uint64_t model_loads() const { return model_loads_.load(std::memory_order_relaxed); }
  // The CUDA stream lane `index` runs on (a cudaStream_t), null for CPU and virtual lanes.
  void* lane_stream(int index) const;
  // The latency profile `model` is scheduled with (empty before start()); with `lane`, the one
  // that lane uses (a GPU partition lane has its own, measured at its SM count).
  std::vector<LatencyPoint> lane_profile(const std::string& model, int lane) const;
  // The latency profile `model` is scheduled with (empty before start()).
  std::vector<LatencyPoint> profile(const std::string& model) const;
  // Where profile(model) was measured (lane_kind "" when it was given or not measured yet).
  ProfileOrigin profile_origin(const std::string& model) const;
  // The profiles of GPU partition lanes so far, by (model name, SMs).
  std::map<std::pair<std::string, int>, std::vector<LatencyPoint>> partition_profiles() const;
  std::string policy_name() const { return policy_->name(); }
  // The latency predictor (null before start()).
  const LatencyPredictor* predictor() const { return predictor_.get(); }

  // Virtual time only (device "virtual", a VirtualClock): one loop round now, and the backend,
  // for a driver that advances the clock (VirtualDriver, the simulator).
  TimeNs run_round();
  VirtualBackend* virtual_backend() const { return backend_.get(); }
  // Virtual time, re-planning: stop dispatching; once lanes_idle(), after the backend changed
  // its layout, take its new lanes (queued requests stay queued) and resume.
  void pause_dispatch();
  bool lanes_idle() const;
  void take_virtual_lanes();
  const Clock& clock() const { return *clock_; }
  bool running() const { return accepting_.load(std::memory_order_acquire); }

  // Planning (runtime/planning.cpp). The planner sees each model's profile by SM share: one set
  // here, else the measured profile as the whole device's (share 1). Any time.
  void set_planner_profile(const std::string& model, ShareProfile profile);
  // The planner's view of this runtime's devices: GPUs (CPU: cpu_lanes whole-device lanes), SMs
  // per GPU, granularity; the variant and interference coefficients of options.replan.
  PlannerConfig planner_config() const;
  // Requests/s per model: the re-planner's EWMA of offered requests when it runs, else the gaps
  // between recently admitted ones.
  std::vector<double> measured_rates() const;
  // Per model: its traffic's rate and burstiness, counted in windows one SLO long since start.
  std::vector<TrafficShape> traffic() const;
  // A plan for `rates` (by model), sized for each model's burst (`dispersion` by model; empty:
  // as measured by traffic(), unknown ones assumed bursty) and, with `check`, proven by
  // simulation first (make_checked_plan: a plan that does not hold falls back). Throws
  // Error(kInvalidInput) before start().
  struct PlanOutcome {
    Plan plan;
    bool meets_slos = false;  // every lane within its SLOs under predicted interference
    PlanCheck check;          // its simulation, when checked
    std::string why;          // what fell back, when the first plan did not hold
  };
  PlanOutcome plan(const std::vector<double>& rates, const PlannerConfig& config,
                   const std::vector<double>& dispersion = {}, bool check = true) const;
  // Makes `plan` the lane layout (set_lanes, when it differs) and, unless `admission` is off,
  // sheds what it could not place (admission_limits()). Returns whether the layout changed.
  bool apply_plan(const Plan& plan, const std::vector<double>& rates, bool admission = true,
                  double admit_fraction = 0.9);
  // Admission limits by model (requests/s; < 0 or missing: none), see Admission.
  void set_admission_limits(const std::vector<double>& limits);
  double admission_limit(int model) const { return admission_ ? admission_->limit(model) : -1; }
  // The planner thread's re-plans so far.
  std::vector<ReplanEvent> replans() const;

 private:
  void on_batch_finished(Batch&& batch, std::vector<Outcome>&& outcomes,
                         const BatchReport& report) override;
  void fail(std::vector<RequestPtr>&& requests, ErrorCode code, const std::string& why) override;
  void on_dispatch(int lane, const Batch& batch, TimeNs now) override;
  // Whether the default layout is CPU lanes (device "cpu", or "auto" without a usable GPU).
  bool on_cpu() const;
  // On green-context GPUs: makes `config`'s lane sizes whole groups of the device's split
  // (granularity a multiple of a group, split_sms what the split offers); else leaves it.
  void fit_to_split(PlannerConfig& config) const;
  // Queued requests of models a new layout does not serve, by model index.
  using Orphans = std::vector<std::pair<int, std::vector<RequestPtr>>>;
  void create_lanes();
  // The lanes start() makes without set_lanes(): cpu_lanes CPU lanes, or one per GPU.
  std::vector<LaneSpec> default_layout() const;
  // Model `m`'s queue, metrics, arrival rate and traffic shape, new or (a reused slot) fresh,
  // and what the policy, admission and re-planner knew of the slot forgotten; control_mu_ and
  // submit_mu_ (and the loop's pause, once started) held.
  void add_model_state(int m, const ModelSpec& spec);
  // Runs `stage` (a registry stage() call) and gives the staged model empty profiles; for a
  // released slot also moves its old model's trace records to an alias first. control_mu_ held.
  int stage_model(const std::function<int()>& stage);
  // Undoes stage_model() for a model not committed.
  void unstage_model(int m);
  // layout_ without `name`: dropped from each lane's list, lanes left with none dropped.
  std::vector<LaneSpec> layout_without(const std::string& name) const;
  // register_model() while serving; control_mu_ held. Fills `orphans` as install_lanes() does.
  int register_live(ModelSpec spec, std::shared_ptr<const ModelProgram> program,
                    std::vector<at::Tensor> example,
                    Orphans& orphans);
  // Whether a model can be added or removed by changing what the serving lanes serve (every
  // lane a WorkerLane whose executor takes live loads, options.layout_changes "incremental").
  // control_mu_ held.
  bool changes_in_place() const;
  // register_live() without new lanes: model `m` (staged) is loaded, warmed up and measured on
  // every lane while they serve, then committed and served by them. control_mu_ held.
  void register_in_place(int m, Orphans& orphans);
  // unregister_model() without new lanes: the lanes stop serving model `m` (a lane of an
  // explicit layout left with no model goes) and unload it. control_mu_ held, `m` drained.
  // False (nothing done) where it cannot: a rebuild does it instead.
  bool unregister_in_place(int m, const std::string& name, Orphans& orphans);
  // set_lanes() keeping the lanes that stay (same device, CPU thread lanes): each keeps its
  // instances, loads (and warms up) the models it gains while it serves and unloads those it
  // loses; lanes for the rest are new, started while the old ones serve. control_mu_ held.
  // False (nothing done) where it cannot: a rebuild does it instead.
  bool set_lanes_in_place(const std::vector<LaneSpec>& layout, Orphans& orphans);
  // With the loop paused and every lane idle: serves with `order` (lanes_ and `fresh`, in their
  // new order, indices already set) after `change` ran, rebuilds the profile book and resumes;
  // lanes not in `order` are returned (to stop). Lane metrics restart only when the lanes
  // changed. Fills `orphans` as install_lanes() does.
  std::vector<std::unique_ptr<Lane>> keep_lanes(const std::vector<Lane*>& order,
                                                std::vector<std::unique_ptr<Lane>> fresh,
                                                Orphans& orphans,
                                                const std::function<void()>& change);
  // Lanes for `layout`, indexed from 0, not started.
  std::vector<std::unique_ptr<Lane>> make_lanes(const std::vector<LaneSpec>& layout);
  // A process lane's worker settings from the options, its worker on `device` (-1: the CPU).
  ProcessOptions process_options(int device) const;
  // Starts `lanes` as this runtime's: loads and warms up the models each serves, and measures
  // the missing profiles, each on the first lane that serves its model.
  void start_lanes(std::vector<std::unique_ptr<Lane>>& lanes, const ProgressFn& progress);
  // With the loop paused and every lane idle: makes `fresh` the serving lanes (new lane
  // metrics, profile book and predictor) and resumes; returns the old lanes. Moves what is
  // queued for models no new lane serves into `orphans`, for fail_orphans(). `first` runs
  // before anything else there, under the same locks (a new model is committed in it).
  std::vector<std::unique_ptr<Lane>> install_lanes(std::vector<std::unique_ptr<Lane>> fresh,
                                                   Orphans& orphans,
                                                   const std::function<void()>& first = {});
  // Fails each orphan with Overloaded (the model is not served any more). No core lock held.
  void fail_orphans(Orphans&& orphans);
  // Profiles by (model, lane) and which lane serves which model, once lanes and profiles exist.
  void build_profile_book();
  // What prepare_lane() measures for a model (bit flags): its default profile, and the profile
  // of this lane's SM count when the lane is a GPU partition.
  static constexpr char kMeasureDefault = 1, kMeasurePartition = 2;
  // On the lane's thread: load and warm up the models it serves; measure the missing profiles of
  // those `measure` says.
  void prepare_lane(Lane& lane, const std::vector<char>& measure, const ProgressFn& progress);
  // prepare_lane() for one model `m`: loads it on the lane, warms it up at every profiled batch
  // size and measures what `measure` says. `done` counts its steps for `progress` (of `total`).
  // Throws Error(kModelError) naming the model, the step and the lane.
  void prepare_model(Lane& lane, int m, char measure, const ProgressFn& progress, int& done,
                     int total);
  LatencyPoint measure_batch(Lane& lane, int model, int batch_size);
  SchedulingState scheduling_state();
  // try_submit() with submit_mu_ held shared (released before waking the loop).
  ErrorCode submit_locked(std::shared_lock<std::shared_mutex>& lock, int m,
                          std::vector<at::Tensor> inputs, std::optional<TimeNs> deadline,
                          int priority, CompletionFn done, bool native, std::string* why);
  // With tracing on: one "rejected" record for a refused submission of model `m`.
  void trace_rejection(int m, std::optional<TimeNs> deadline);
  // The planner's view of the models at `rates` (profiles by share: plan_profiles_, else the
  // measured one as share 1, kept in `measured`). Caller holds plan_mu_.
  std::vector<PlannerModel> planner_models(const std::vector<double>& rates,
                                           std::vector<ShareProfile>& measured,
                                           const std::vector<double>& dispersion = {}) const;
  // The planner thread (options.replan.every_s > 0, real time): re-plans until stop_planner().
  void planner_main();
  void stop_planner();
  // Completes `requests[i]` with `outcomes[i]`: native ones directly, the rest through the
  // delivery thread (or, without one, in one hook call here).
  void deliver(std::vector<RequestPtr>&& requests, std::vector<Outcome>&& outcomes) const;

  const RuntimeOptions options_;
  std::shared_ptr<Clock> clock_;                     // SteadyClock unless a test injects one
  ModelRegistry models_;                             // grows while serving (register_live)
  std::atomic<std::uint64_t> model_loads_{0};        // prepare_model() loads, all lanes
  // Per model, indexed below models_.size() by other threads; capacity reserved for every model
  // the registry can hold, so appending while serving never moves them.
  std::vector<std::unique_ptr<RequestQueue>> queues_;          // per model
  std::vector<std::unique_ptr<ModelMetrics>> metrics_;         // per model
  std::vector<LatencyProfile> profiles_;             // per model; fixed once serving
  std::vector<ProfileOrigin> profile_origins_;       // per model: where profiles_ was measured
  mutable std::mutex partition_mu_;                  // guards partition_profiles_ (lane threads
                                                     // measure concurrently)
  std::map<std::pair<int, int>, LatencyProfile> partition_profiles_;  // (model, SMs) of GPU
                                                     // partition lanes; never erased
  ProfileBook book_;                                 // by (model, lane); built by start()
  std::unique_ptr<LatencyPredictor> predictor_;      // built by start(), after book_
  std::shared_ptr<VirtualBackend> backend_;          // device "virtual": creates the lanes
  std::vector<std::unique_ptr<ArrivalRate>> rates_;  // per model
  std::unique_ptr<ArrivalShape> shape_;              // per-model burstiness; built by start()
  TraceRecorder trace_;                              // used when options_.trace
  std::vector<std::unique_ptr<Lane>> lanes_;         // created by start()
  std::vector<LaneSpec> layout_;                     // set_lanes(); empty: the default layout
  std::weak_ptr<MpsDaemon> mps_daemon_;  // MPS lanes' daemon while one of them holds it: new
                                         // lanes reuse it (one MPS server per GPU)
  std::vector<std::unique_ptr<LaneMetrics>> lane_metrics_;     // per lane; set under submit_mu_
  std::unique_ptr<BatchPolicy> policy_;              // used only by the loop
  std::unique_ptr<EventLoop> loop_;                  // created by start()
  DeliveryHook delivery_hook_;                       // empty: call directly
  std::unique_ptr<Deliverer> deliverer_;             // runs hooked completions off the lanes'
                                                     // threads; real time with a hook only
  std::unique_ptr<Admission> admission_;             // built by start(); sheds what a plan cannot
  std::unique_ptr<Replanner> replanner_;             // built by start() when re-planning

  mutable std::mutex plan_mu_;            // guards the planner fields below
  std::condition_variable plan_cv_;       // wakes the planner thread to stop
  bool plan_stop_ = false;                // the planner thread must return
  std::vector<std::optional<ShareProfile>> plan_profiles_;  // per model; set_planner_profile()
  std::vector<ReplanEvent> replans_;      // the planner thread's events
  std::thread planner_thread_;            // runs planner_main()

  std::mutex control_mu_;                 // serializes register/start/shutdown
  bool started_ = false;                  // start() succeeded
  bool shut_down_ = false;                // shutdown() ran
  bool gpu_outputs_ = false;              // outputs stay on GPU lanes' devices; set by start()
  mutable std::shared_mutex submit_mu_;   // submit/stats (shared) vs register/close (exclusive)
  std::atomic<bool> accepting_{false};    // between start() and shutdown()
  std::atomic<std::uint64_t> next_id_{1}; // request ids
  std::atomic<TimeNs> started_at_{0};     // for rates in stats()
};

}  // namespace gpulanes
