#!/usr/bin/env bash
# The C++ tests under sanitizers (run by .ci/run after scripts/test.sh, which sets up .venv):
#   bash scripts/sanitize.sh address,undefined   # ASan + UBSan, build/sanitize-address-undefined
#   bash scripts/sanitize.sh thread              # TSan, build/sanitize-thread
# Under ASan + UBSan the _C extension is built instrumented too and a short pytest run (the
# hostile-input, option, isolation, concurrency and re-entrancy tests) imports it instead of the dev
# build: the sanitizer runtimes are preloaded into the (uninstrumented) interpreter.
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
# grpc++ and its abseil are not instrumented: scripts/tsan.supp leaves out races TSan reports
# inside them (it cannot see their locking); a race with one frame in them is left out too.
export TSAN_OPTIONS="halt_on_error=1:suppressions=$PWD/scripts/tsan.supp"
"$DIR/gpulanes_cpp_tests" --gtest_brief=1

if [[ "$KIND" == *address* ]]; then
  cmake --build "$DIR" --target _C
  # A package directory whose gpulanes is the sources plus the instrumented extension.
  PKG="$DIR/python"
  rm -rf "$PKG" && mkdir -p "$PKG/gpulanes"
  ln -s "$PWD"/python/gpulanes/* "$PKG/gpulanes/"
  ln -s "$PWD/$DIR"/_C*.so "$PWD/$DIR/_build_info.py" "$PKG/gpulanes/"
  PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
  # torch's libraries are not instrumented: their new/delete pairs and globals are not ours.
  ASAN_OPTIONS="$ASAN_OPTIONS:alloc_dealloc_mismatch=0:detect_odr_violation=0:verify_asan_link_order=0" \
  LD_PRELOAD="$PRELOAD" GPULANES_EXTENSION_DIR="$PKG" \
    "$PY" scripts/pytest_instrumented.py -q -p no:cacheprovider \
    tests/python/test_isolation.py tests/python/test_concurrency.py \
    tests/python/test_reentrancy.py tests/python/test_errors.py tests/python/test_options.py \
    tests/python/test_async_completions.py
fi
