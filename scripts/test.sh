#!/usr/bin/env bash
# The README's test command: sets up/builds what is out of date (scripts/bootstrap.sh), then runs
# the C++ tests (GoogleTest) and the Python tests (pytest; GPU tests skip without CUDA).
# Extra arguments go to pytest, e.g. `scripts/test.sh -m gpu` or `scripts/test.sh -k errors`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
echo "== C++ tests (GoogleTest) =="
"$GPULANES_CPP_TESTS" --gtest_brief=1
echo "== Python tests (pytest) =="
set +e
python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$rc"
