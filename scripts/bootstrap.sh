#!/usr/bin/env bash
# Sourced by scripts/demo.sh and scripts/test.sh: brings a fresh clone (or an existing one) to a
# built, current state, doing only the steps whose inputs changed since the last run.
#   1. Debian packages (GoogleTest sources, Eigen, ccache, grpc++) via apt-get, when root and
#      missing.
#   2. .venv with requirements-dev.txt (re-run only when that file changes); perf_analyzer and
#      KServe's client in ~/.cache/gpulanes (once).
#   3. The C++ core, the _C extension and the GoogleTest binary, built incrementally by ninja in
#      build/ through an editable pip install (re-run only when csrc/, tests/cpp/, CMake or pyproject change).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf '[bootstrap] %s\n' "$*" >&2; }

# --- 1. system packages ----------------------------------------------------------------------
need_apt=()
[ -f /usr/src/googletest/CMakeLists.txt ] || need_apt+=(libgtest-dev)
[ -f /usr/include/eigen3/Eigen/Core ] || need_apt+=(libeigen3-dev)
command -v ccache >/dev/null 2>&1 || need_apt+=(ccache)
# grpc++ for the C++ gRPC front end (gpulanes builds without it, serving gRPC from Python).
[ -f /usr/include/grpcpp/grpcpp.h ] || need_apt+=(libgrpc++-dev)
[ -x /usr/bin/protoc ] || need_apt+=(protobuf-compiler)
# libgrpc++-dev only recommends protobuf's headers; grpc++'s CMake config needs them.
[ -f /usr/include/google/protobuf/message.h ] || need_apt+=(libprotobuf-dev)
[ -x /usr/bin/grpc_cpp_plugin ] || need_apt+=(protobuf-compiler-grpc)
# perf_analyzer (Triton's load generator, which tests drive the server with) links libb64.
[ -f /usr/lib/x86_64-linux-gnu/libb64.so.0d ] || need_apt+=(libb64-0d)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    log "apt-get install ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    log "missing Debian packages (${need_apt[*]}); not root, so install them yourself"
  fi
fi

# --- 2. virtual environment ------------------------------------------------------------------
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PY" -m venv .venv
fi
VPY="$ROOT/.venv/bin/python"
deps_hash=$(sha256sum requirements-dev.txt | cut -d' ' -f1)
if [ "$(cat .venv/.deps-stamp 2>/dev/null)" != "$deps_hash" ]; then
  log "installing requirements-dev.txt into .venv (first run takes minutes)"
  "$VPY" -m pip install -q --upgrade pip
  "$VPY" -m pip install -q -r requirements-dev.txt
  echo "$deps_hash" > .venv/.deps-stamp
fi
# perf_analyzer, taken once from the tritonclient wheel into ~/.cache/gpulanes
# (benchmarks/perf_analyzer.py says why): the serving tests run it against gpulanes serve.
"$VPY" benchmarks/perf_analyzer.py >/dev/null
# KServe's own Python client, in a venv of its own (the kserve package pins pandas < 3 and
# psutil < 6): tests/python/test_kserve_client.py drives gpulanes serve with it.
KSERVE_VENV="$HOME/.cache/gpulanes/kserve-venv"
if ! "$KSERVE_VENV/bin/python" -c "import kserve" >/dev/null 2>&1; then
  log "installing KServe's client (kserve==0.21.0) into $KSERVE_VENV"
  "$PY" -m venv --clear "$KSERVE_VENV"
  "$KSERVE_VENV/bin/python" -m pip install -q "kserve==0.21.0"
fi

# --- 3. build --------------------------------------------------------------------------------
src_hash=$( (find csrc cmake tests/cpp tests/ops -type f 2>/dev/null; echo CMakeLists.txt; echo pyproject.toml; echo python/gpulanes/serve/kserve_v2.proto) \
  | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.build-stamp 2>/dev/null)" != "$src_hash" ]; then
  log "building gpulanes (C++ core, _C extension, C++ tests) incrementally in build/"
  export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
  "$VPY" -m pip install -q --no-build-isolation --no-deps -e . \
    -Cbuild-dir=build/dev -Ccmake.define.GPULANES_BUILD_TESTS=ON -Ccmake.build-type=Release
  echo "$src_hash" > .venv/.build-stamp
fi
export GPULANES_CPP_TESTS="$ROOT/build/dev/gpulanes_cpp_tests"
export GPULANES_TEST_OPS="$ROOT/build/dev/libgpulanes_test_ops.so"
export PATH="$ROOT/.venv/bin:$PATH"
