// Per-model statistics in the Prometheus text exposition format (version 0.0.4): request
// outcomes as counters, in-flight and goodput as gauges, latency / queueing / batch execution
// time as summaries (p50, p90, p99, p99.9, in seconds), batch sizes as a histogram.
#pragma once

#include <string>
#include <vector>

#include "gpulanes/metrics/model_metrics.h"

namespace gpulanes {

std::string prometheus_text(const std::vector<ModelStats>& stats);

}  // namespace gpulanes
