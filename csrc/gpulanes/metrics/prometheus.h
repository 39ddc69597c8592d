// Statistics in the Prometheus text exposition format (version 0.0.4). Per model: request
// outcomes as counters, in-flight, goodput and batch-latency prediction error as gauges, latency
// / queueing / batch execution time as summaries (p50, p90, p99, p99.9, in seconds), batch sizes
// as a histogram. Per lane: batches, requests by outcome and busy seconds as counters, busy
// fraction as a gauge.
#pragma once

#include <string>
#include <vector>

#include "gpulanes/metrics/lane_metrics.h"
#include "gpulanes/metrics/model_metrics.h"

namespace gpulanes {

std::string prometheus_text(const std::vector<ModelStats>& stats,
                            const std::vector<LaneStats>& lanes = {});

}  // namespace gpulanes
