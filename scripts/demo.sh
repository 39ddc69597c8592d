#!/usr/bin/env bash
# The README's demo command: sets up/builds what is out of date, then serves three models under
# Poisson load for ~20 s on the default device (CUDA when present, else CPU) and prints a table.
# Extra arguments go to examples/demo.py (e.g. --seconds 5).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
exec python examples/demo.py "$@"
