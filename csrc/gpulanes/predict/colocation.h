// What runs beside a batch on the same device, as features for interference prediction. Tracks,
// per lane, the batch running now and the last finished ones; per lane, an EWMA of the
// co-location its batches actually experienced. Thread-safe: the event loop reads features and
// records starts, lane workers record finishes.
//
// Features of a batch of solo latency s (ms) about to start on lane L at `now` (kFeatures = 12):
//   0  1                      intercept (ms of fixed overhead)
//   1  s                      the profile's solo latency on this lane
//   2  share                  the lane's SM share
//   3  s * ov                 ov = sum over other lanes of the device of the fraction of this
//                             batch's predicted run their current batch overlaps (fine-grained)
//   4  s * ov * l2_self       ...times this batch's own L2 use
//   5  s * ov_l2              ov_l2 = the same sum weighted by each co-runner's L2 use
//   6  s * ov * dram_self
//   7  s * ov_dram            weighted by DRAM use
//   8  s * ewma_l2            EWMA (weight alpha) of the L2 use of co-runners, averaged over time,
//   9  s * ewma_dram          that this lane's finished batches experienced (and DRAM)
//  10  s * next_l2            next = sum over other lanes with queued work of the part of this
//  11  s * next_dram          batch's run their current batch leaves uncovered (1 - its overlap),
//                             weighted by the L2 (DRAM) use of their latest batch: a co-runner
//                             with a backlog starts its next batch as soon as this one ends.
//                             Half the co-location a batch sees comes from batches that start
//                             after it (benchmarks/predictor.py); queues say which will.
// Coarse features (the "static" predictor, as in gpu-let) count a co-runner fully whenever it is
// running at the start (overlap 1) and leave 8 to 11 at 0.
#pragma once

#include <array>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <vector>

#include "gpulanes/core/time.h"

namespace gpulanes {

class CoLocation {
 public:
  static constexpr int kFeatures = 12;
  using Features = std::array<double, kFeatures>;
  // Whether a lane has queued work now. Called from features() on the event loop's thread,
  // outside this class's lock; empty: never (features 10 and 11 stay 0).
  using Backlog = std::function<bool(int lane)>;

  // `lane_device[l]`: the device lane l runs on (lanes of one device interfere);
  // `lane_share[l]`: its SM share. `alpha`: EWMA weight of the newest batch.
  CoLocation(std::vector<int> lane_device, std::vector<double> lane_share, double alpha,
             Backlog backlog = {});

  Features features(int lane, TimeNs now, DurationNs solo, double l2, double dram,
                    bool coarse) const;
  // A batch with this resource use starts on `lane`; it is expected to end at `expected_end`.
  void on_start(int lane, TimeNs start, TimeNs expected_end, double l2, double dram);
  // The lane's running batch ended: updates the lane's EWMA with what it experienced.
  void on_finish(int lane, TimeNs end);
  // The EWMA signals of `lane` (l2, dram).
  std::pair<double, double> ewma(int lane) const;

 private:
  struct Interval {
    TimeNs start, end;  // end: kNever while running
    double l2, dram;
  };
  static constexpr std::size_t kHistory = 32;  // finished batches kept per lane

  const double alpha_;
  const Backlog backlog_;                   // queued work by lane; may be empty
  const std::vector<double> share_;         // by lane
  std::vector<std::vector<int>> peers_;     // lane -> other lanes on its device
  mutable std::mutex mu_;                   // guards the fields below
  std::vector<std::optional<Interval>> running_;   // by lane; end = expected end
  std::vector<std::deque<Interval>> history_;      // by lane, oldest first
  std::vector<double> ewma_l2_, ewma_dram_;        // by lane
};

}  // namespace gpulanes
