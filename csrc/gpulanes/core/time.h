// Time types. Every timestamp in gpulanes is nanoseconds on CLOCK_MONOTONIC (the clock behind
// std::chrono::steady_clock on Linux and Python's time.monotonic()), so deadlines computed in
// Python and in C++ compare directly.
#pragma once

#include <cstdint>
#include <limits>

namespace gpulanes {

using TimeNs = std::int64_t;      // absolute time point, ns since an unspecified epoch
using DurationNs = std::int64_t;  // signed span of time, ns

inline constexpr TimeNs kNever = std::numeric_limits<TimeNs>::max();

constexpr DurationNs from_us(double us) { return static_cast<DurationNs>(us * 1e3); }
constexpr DurationNs from_ms(double ms) { return static_cast<DurationNs>(ms * 1e6); }
constexpr double to_us(DurationNs ns) { return static_cast<double>(ns) / 1e3; }
constexpr double to_ms(DurationNs ns) { return static_cast<double>(ns) / 1e6; }

}  // namespace gpulanes
