#include "gpulanes/core/check.h"

#include <cmath>
#include <sstream>

#include "gpulanes/core/error.h"

namespace gpulanes {

void check_real(const std::string& name, double value, double lo, double hi, bool open_lo) {
  const bool ok = std::isfinite(value) && (open_lo ? value > lo : value >= lo) && value <= hi;
  if (ok) return;
  std::ostringstream os;
  os << name << " must be a finite number in " << (open_lo ? "(" : "[") << lo << ", " << hi
     << "], got " << value;
  throw Error(ErrorCode::kInvalidInput, os.str());
}

void check_int(const std::string& name, long long value, long long lo, long long hi) {
  if (value >= lo && value <= hi) return;
  throw Error(ErrorCode::kInvalidInput, name + " must be an integer in [" + std::to_string(lo) +
                                            ", " + std::to_string(hi) + "], got " +
                                            std::to_string(value));
}

}  // namespace gpulanes
