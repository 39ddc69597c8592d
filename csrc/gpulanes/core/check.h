// Range checks for options: each throws Error(kInvalidInput) naming the option, the range it
// allows and the value it got. NaN and infinities fail every check (comparisons alone would let
// NaN through).
#pragma once

#include <string>

namespace gpulanes {

// `value` in [lo, hi]; with `open_lo`, in (lo, hi].
void check_real(const std::string& name, double value, double lo, double hi, bool open_lo = false);
// `value` an integer in [lo, hi].
void check_int(const std::string& name, long long value, long long lo, long long hi);

}  // namespace gpulanes
