#!/usr/bin/env bash
# The Python test suite N times in a row (default 3) while two busy-loop processes load the
# cores: tests must not depend on this machine's speed. Writes
# benchmarks/results/suite-under-load-<host>-<date>.json (each run's exit status, counts and
# wall time) and exits non-zero if any run failed.
#   bash scripts/suite_under_load.sh [RUNS] [pytest args...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/bootstrap.sh
RUNS="${1:-3}"
shift || true
busy=()
for _ in 1 2; do
  python -c "while True: pass" &
  busy+=($!)
done
trap 'kill "${busy[@]}" 2>/dev/null || true' EXIT
LOG="$(mktemp -d)"
status=0
for i in $(seq 1 "$RUNS"); do
  start=$(date +%s)
  set +e
  python -m pytest -q -p no:cacheprovider "$@" > "$LOG/run$i.txt" 2>&1
  rc=$?
  set -e
  echo "$rc $(( $(date +%s) - start ))" > "$LOG/run$i.rc"
  echo "run $i: exit $rc, $(tail -1 "$LOG/run$i.txt")"
  [ "$rc" -eq 0 ] || status=1
done
python - "$LOG" "$RUNS" "$*" <<'PY'
import json, pathlib, re, sys
sys.path.insert(0, "benchmarks")
from _common import RESULTS, environment, write_result
log, runs, args = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rows = []
for i in range(1, runs + 1):
    rc, wall = (log / f"run{i}.rc").read_text().split()
    summary = (log / f"run{i}.txt").read_text().strip().splitlines()[-1]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", summary)}
    rows.append({"run": i, "exit": int(rc), "wall_s": int(wall), "summary": summary, **counts})
env = environment("cpu")
env["command"] = "bash scripts/suite_under_load.sh " + " ".join(sys.argv[2:]).strip()
path = write_result("suite-under-load", env, {"load": "two busy-loop Python processes",
                                              "runs": rows,
                                              "all_passed": all(r["exit"] == 0 for r in rows)},
                    RESULTS)
print(f"wrote {path}")
PY
exit "$status"
