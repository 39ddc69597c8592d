#!/usr/bin/env bash
# Run HERE (not on the GPU machine), once per checkout, before scripts/gpu_proof.sh: the lent GPU
# machine has torch, pybind11, scikit-build-core, cmake and ninja but no Eigen and no GoogleTest
# and no network, so their sources travel in .deps/ (ignored by git, named in the device call's
# `carry`). Needs Debian's libeigen3-dev and libgtest-dev here (scripts/bootstrap.sh installs them).
# DEPS=DIR puts them elsewhere (the proof's CPU dry run in the tests does).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DEPS="${DEPS:-$PWD/.deps}"
rm -rf "$DEPS" && mkdir -p "$DEPS/eigen/include" "$DEPS/eigen/share/eigen3"
cp -r /usr/include/eigen3 "$DEPS/eigen/include/"
cp -r /usr/share/eigen3/cmake "$DEPS/eigen/share/eigen3/"
cp -r /usr/src/googletest "$DEPS/googletest"
du -sh "$DEPS"
