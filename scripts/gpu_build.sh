#!/usr/bin/env bash
# Builds gpulanes ON a lent GPU machine against its torch (no network: --no-index; Eigen's
# headers, and GoogleTest's sources with --tests, travel in .deps/ from scripts/gpu_prepare.sh).
#   bash scripts/gpu_build.sh           # the extension only (scripts/gpu_proof.sh)
#   bash scripts/gpu_build.sh --tests   # and the C++ test binary build/gpu/gpulanes_cpp_tests
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TESTS=OFF
[ "${1:-}" = "--tests" ] && TESTS=ON
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
"${PYTHON:-python3}" -m pip install -q --no-build-isolation --no-deps --no-index -e . \
  -Cbuild-dir=build/gpu -Ccmake.build-type=Release \
  -Ccmake.define.GPULANES_BUILD_TESTS=$TESTS \
  -Ccmake.define.GPULANES_GTEST_SRC="$PWD/.deps/googletest" \
  -Ccmake.define.Eigen3_DIR="$PWD/.deps/eigen/share/eigen3/cmake"
