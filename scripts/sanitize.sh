#!/usr/bin/env bash
# The C++ tests under sanitizers (run by .ci/run after scripts/test.sh, which sets up .venv):
#   bash scripts/sanitize.sh address,undefined   # ASan + UBSan, build/sanitize-address-undefined
#   bash scripts/sanitize.sh thread              # TSan, build/sanitize-thread
# The core and the tests are instrumented; torch's libraries are not, so ASan's leak check is
# off (torch keeps allocations to process exit) and the shadow gap stays unprotected (CUDA's
# runtime maps memory there when it loads).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
KIND="${1:-address,undefined}"
DIR="build/sanitize-${KIND//,/-}"
PY="$PWD/.venv/bin/python"
export PATH="$PWD/.venv/bin:$PATH"  # cmake >= 3.26 and ninja from requirements-dev.txt
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
cmake -S . -B "$DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPython_EXECUTABLE="$PY" \
  -DGPULANES_BUILD_TESTS=ON -DGPULANES_SANITIZE="$KIND" > "$DIR.configure.log" 2>&1 ||
  { cat "$DIR.configure.log"; exit 1; }
cmake --build "$DIR" --target gpulanes_cpp_tests
export ASAN_OPTIONS="detect_leaks=0:protect_shadow_gap=0:abort_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export TSAN_OPTIONS="halt_on_error=1"
"$DIR/gpulanes_cpp_tests" --gtest_brief=1
