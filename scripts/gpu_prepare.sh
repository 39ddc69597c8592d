#!/usr/bin/env bash
# Run HERE (not on the GPU machine), once per checkout, before scripts/gpu_check.sh: the lent GPU
# machine has torch, pybind11, scikit-build-core, cmake and ninja but no Eigen and no GoogleTest
# and no network, so their sources travel in .deps/ (ignored by git, named in the device call's
# `carry`). Needs Debian's libeigen3-dev and libgtest-dev here (scripts/bootstrap.sh installs them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rm -rf .deps && mkdir -p .deps/eigen/include .deps/eigen/share/eigen3
cp -r /usr/include/eigen3 .deps/eigen/include/
cp -r /usr/share/eigen3/cmake .deps/eigen/share/eigen3/
cp -r /usr/src/googletest .deps/googletest
grep -qx '/.deps/' .git/info/exclude 2>/dev/null || echo '/.deps/' >> .git/info/exclude
du -sh .deps
