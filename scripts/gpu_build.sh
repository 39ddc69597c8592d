#!/usr/bin/env bash
# Builds gpulanes ON a lent GPU machine against its torch (no network: --no-index; Eigen's
# headers, and GoogleTest's sources, travel in .deps/ from scripts/gpu_prepare.sh).
#   bash scripts/gpu_build.sh [--log FILE] [--require-gpu]   # the extension and the worker
#   bash scripts/gpu_build.sh --tests        # and the C++ test binary build/gpu/gpulanes_cpp_tests
#   bash scripts/gpu_build.sh --configure-only [--log FILE]  # the same CMake line, configure only
#                                            # (the GPU proof's dry run on a CPU machine)
#   bash scripts/gpu_build.sh --reuse [--require-gpu]        # no build: check the one that is here
# First it checks the toolchain (scripts/build_check.py: one line per missing piece). The build's
# whole verbose output goes to the log (default build/gpu-build.log), its last lines to stdout.
# Then it checks what came out: gpulanes imports, and where torch is a CUDA build, it was built
# with CUDA (and with --require-gpu, it sees a GPU): a build without CUDA is a failure here.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
DEPS="${DEPS:-$PWD/.deps}"
MODE=build TESTS=OFF LOG=build/gpu-build.log REQUIRE_GPU=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tests) TESTS=ON ;;
    --configure-only) MODE=configure ;;
    --reuse) MODE=reuse ;;
    --require-gpu) REQUIRE_GPU=1 ;;
    --log) LOG="$2"; shift ;;
    *) echo "gpu_build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"

verify() {  # what the build produced: CUDA where torch has it, a GPU where asked
  REQUIRE_GPU=$REQUIRE_GPU "$PY" - <<'EOF'
import os, sys
import torch
try:
    import gpulanes
    from gpulanes import _C
except Exception as e:  # noqa: BLE001 - say what is wrong in one line
    sys.exit(f"gpulanes does not import: {type(e).__name__}: {e}")
print(f"gpulanes {gpulanes.__version__} from {_C.__file__}; built with CUDA: {_C.built_with_cuda}")
if torch.version.cuda and not _C.built_with_cuda:
    sys.exit(f"torch is a CUDA {torch.version.cuda} build but gpulanes was built without CUDA "
             "(the CUDA toolkit was not found at configure time: set CUDA_HOME)")
if os.environ["REQUIRE_GPU"] == "1" and not _C.cuda_lane_support():
    sys.exit(f"no usable GPU: torch.cuda.is_available()={torch.cuda.is_available()}")
EOF
}

if [ "$MODE" = reuse ]; then
  verify || { echo "no usable gpulanes build here (on the GPU machine: call 1's build is gone when the machine was given back between calls; run call 1 again)" >&2; exit 1; }
  exit 0
fi

"$PY" scripts/build_check.py --eigen-dir "$DEPS/eigen/share/eigen3/cmake"
mkdir -p "$(dirname "$LOG")"
# One list of CMake definitions for both the pip build and the configure-only dry run.
DEFINES=(CMAKE_BUILD_TYPE=Release GPULANES_BUILD_TESTS=$TESTS
         GPULANES_GTEST_SRC="$DEPS/googletest" Eigen3_DIR="$DEPS/eigen/share/eigen3/cmake")
t0=$(date +%s)
if [ "$MODE" = configure ]; then
  BUILD_DIR="${BUILD_DIR:-build/gpu-configure}"
  set +e
  cmake -S . -B "$BUILD_DIR" -G Ninja -DPython_EXECUTABLE="$(command -v "$PY")" \
    "${DEFINES[@]/#/-D}" > "$LOG" 2>&1
  rc=$?
  set -e
else
  echo "building (verbose log: $LOG) ..."
  set +e
  "$PY" -m pip install -v --no-build-isolation --no-deps --no-index -e . \
    -Cbuild-dir=build/gpu -Cbuild.verbose=true "${DEFINES[@]/#/-Ccmake.define.}" > "$LOG" 2>&1
  rc=$?
  set -e
fi
echo "-- last lines of $LOG (rc $rc after $(( $(date +%s) - t0 ))s):"
tail -n 25 "$LOG"
[ "$rc" -eq 0 ] || exit "$rc"
if [ "$MODE" = configure ]; then
  if "$PY" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)"; then
    grep -q "CUDA lanes: ON" "$LOG" || { echo "torch is a CUDA build but CMake configured gpulanes without CUDA lanes" >&2; exit 1; }
  fi
  echo "configured in $BUILD_DIR (the device's build line, not built here)"
fi
verify
