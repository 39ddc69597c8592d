#!/usr/bin/env bash
# The GPU proof: every GPU feature of gpulanes in ONE command on a bare lent GPU machine
# (H100/H200, no network), most valuable stage first, each under its own `timeout` and all
# within BUDGET_S (default 540 s: a 10-minute call with room for the machine's start).
#
#   stage        expected (bare H200, 16 cores)   what it shows
#   a env           5 s   GPU, driver, torch, SMs, green-context support, the device's SM group
#                         size and alignment (read from its SM resource), a dry-run split
#   b build       150-240 s  gpulanes built there against its torch (carried Eigen headers)
#   c pytest-gpu   60-120 s  every test marked `gpu`, JUnit file
#   d probe        20-40 s   %smid probe: green lanes own disjoint SMs, for layouts that fit
#   e mix          60-120 s  four models: one whole-GPU lane vs streams vs green lanes
#   f partitions   40-90 s   ResNet-50 fp16 throughput at a few SM counts, one co-location pair
#   g pytest-mps   40-90 s   the MPS lanes' tests (tests/python/test_mps.py: a private MPS daemon,
#                         worker processes as MPS clients), JUnit file; last, since each test
#                         starts worker processes and may need the time the others do not
#
# Run it (after `bash scripts/gpu_prepare.sh` here, once per checkout):
#   device run(command="bash scripts/gpu_proof.sh", carry=[".deps"], timeout_s=600)
# Everything lands in $OUT as each stage ends (the device tool returns at most 8 files):
#   proof.log (all output), proof.json (environment and each stage's status and seconds),
#   pytest-gpu.xml, gpu-probe-*.json, gpu-mix-*.json, gpu-partitions-*.json, <gpu>-profiles.json,
#   pytest-mps.xml (8 files).
# Commit them to benchmarks/results/ (the profiles to benchmarks/profiles/).
#
#   bash scripts/gpu_proof.sh --cpu
# is a dry run of the same stages on the CPU with tiny sizes (no build: it uses the one
# scripts/bootstrap.sh made); tests/python/test_gpu_proof.py runs it so this script cannot rot.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MODE=cuda
[ "${1:-}" = "--cpu" ] && MODE=cpu
OUT="${OUT:-/tmp/gpulanes-proof}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
BUDGET_S="${BUDGET_S:-540}"
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)"
LOG="$OUT/proof.log"
STATE="$(mktemp -d)"  # stage lines and the environment, folded into proof.json (outside $OUT:
                      # the device tool returns at most 8 files)
STAGES="$STATE/stages.tsv"
: > "$LOG"
: > "$STAGES"
START=$(date +%s)
export MODE OUT PY STATE

summary() {  # proof.json: environment and stages so far
  "$PY" - "$OUT" "$STATE" "$MODE" <<'EOF'
import json, sys
from pathlib import Path
out, state, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
env = {}
try:
    env = json.loads((state / "env.json").read_text())
except (OSError, ValueError):
    pass
stages = []
for line in (state / "stages.tsv").read_text().splitlines():
    name, rc, secs, limit = line.split("\t")
    status = "ok" if rc == "0" else "timeout" if rc in ("124", "137") else "failed"
    stages.append({"stage": name, "status": status, "rc": int(rc), "seconds": int(secs),
                   "limit_s": int(limit)})
(out / "proof.json").write_text(json.dumps({"mode": mode, "env": env, "stages": stages},
                                           indent=2) + "\n")
EOF
}

# stage NAME LIMIT_S COMMAND...: runs COMMAND (a program or an exported function) under
# `timeout`, capped by what is left of the budget; its output goes to proof.log, its status to
# proof.json at once.
stage() {
  local name=$1 limit=$2
  shift 2
  local left=$(( BUDGET_S - ($(date +%s) - START) ))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 5 ]; then
    printf '%s\t%s\t%s\t%s\n' "$name" 124 0 0 >> "$STAGES"
    echo "== $name: skipped, budget spent ==" | tee -a "$LOG"
    summary
    return
  fi
  echo "== $name (limit ${limit}s) ==" | tee -a "$LOG"
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" bash -c '"$@"' "$name" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" $(( $(date +%s) - t0 )) "$limit" >> "$STAGES"
  echo "== $name: rc $rc after $(( $(date +%s) - t0 ))s ==" | tee -a "$LOG"
  summary
}

env_stage() { "$PY" scripts/gpu_env.py > "$STATE/env.json" && cat "$STATE/env.json"; }

build_stage() {
  if [ "$MODE" = cpu ]; then  # the dry run uses the build bootstrap.sh made
    "$PY" -c "import gpulanes, gpulanes._C as c; print('gpulanes', gpulanes.__version__, 'built:', c.__file__)"
    return
  fi
  PYTHON="$PY" bash scripts/gpu_build.sh && "$PY" scripts/gpu_env.py > "$STATE/env.json"  # now with what gpulanes reads itself
}

pytest_stage() {
  local files=(tests/python --ignore=tests/python/test_mps.py)
  [ "$MODE" = cpu ] && files=(tests/python/test_gpu.py tests/python/test_gpu_lanes.py)
  "$PY" -m pytest -q -p no:cacheprovider -m gpu -rs --junitxml="$OUT/pytest-gpu.xml" "${files[@]}"
}

mps_stage() {
  "$PY" -m pytest -q -p no:cacheprovider -m gpu -rs --junitxml="$OUT/pytest-mps.xml" \
    tests/python/test_mps.py
}
export -f env_stage build_stage pytest_stage mps_stage

if [ "$MODE" = cpu ]; then
  PROBE=(--device cpu)
  MIX=(--device cpu --seconds 0.6 --steps 1 --grow 2)
  PARTS=(--device cpu --sms full --pairs resnet50:bert --seconds 0.5)
else
  PROBE=(--device cuda)
  MIX=(--device cuda --seconds 2.5 --steps 2 --grow 16)
  PARTS=(--device cuda --sms 16 32 64 full --pairs resnet50:vgg16 --seconds 3)
fi

stage env 60 env_stage
stage build 300 build_stage
stage pytest-gpu 150 pytest_stage
stage probe 60 "$PY" benchmarks/gpu_partitions.py "${PROBE[@]}" --parts probe --name gpu-probe --out "$OUT"
stage mix 150 "$PY" benchmarks/gpu_mix.py "${MIX[@]}" --out "$OUT"
stage partitions 150 "$PY" benchmarks/gpu_partitions.py "${PARTS[@]}" --parts sm_curve colocation --out "$OUT"
stage pytest-mps 120 mps_stage

failed=$(awk -F'\t' '$2 != 0' "$STAGES" | wc -l)
echo "gpu_proof ($MODE): $failed stage(s) not ok; $(( $(date +%s) - START ))s in all" | tee -a "$LOG"
rm -rf "$STATE"
[ "$failed" -eq 0 ]
