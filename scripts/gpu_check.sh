#!/usr/bin/env bash
# Longer GPU checks, after scripts/gpu_proof.sh (the first thing a lent GPU runs). Run ON a lent
# GPU machine through the device tool:
#   (here, once)  bash scripts/gpu_prepare.sh
#   (device)      run(command="bash scripts/gpu_check.sh tests", carry=[".deps"])
#   (device)      run(command="bash scripts/gpu_check.sh bench", carry=[".deps"])
#   (device)      run(command="bash scripts/gpu_check.sh partitions", carry=[".deps"])
#   (device)      run(command="bash scripts/gpu_check.sh plan", carry=[".deps"])
#   (device)      run(command="bash scripts/gpu_check.sh mix", carry=[".deps"])
# (`all`, the default, does both in one call, which may pass the 10-minute limit of one call; a
# warm machine keeps build/gpu between calls, so the second call does not rebuild.)
# Builds gpulanes against that machine's torch (no network: --no-index). `tests`: the C++ tests
# and the whole pytest suite with the GPU tests (green-context lanes and the %smid probe among
# them). `bench`: the overhead benchmark, the demo and the policies benchmark on CUDA.
# `partitions`: benchmarks/gpu_partitions.py (probe, SM-count curve, co-location matrix, the
# GPU's profile file) and the simulator fidelity check on CUDA. `plan`: benchmarks/gpu_plan.py (the
# planner re-laying out green-context lanes through a rate step vs one whole-GPU lane; it uses
# benchmarks/profiles/<gpu>-profiles.json for this GPU, e.g. h100 or h200, when committed).
# `mix`: benchmarks/gpu_mix.py (four models: one whole-GPU lane vs streams vs green lanes;
# highest rate at >= 99%). Logs, JSON and
# plots land in $OUT;
# commit them to benchmarks/results/ (and <gpu>-profiles.json to benchmarks/profiles/).
set -uo pipefail
STAGE="${1:-all}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-/tmp/gpulanes-gpu-out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)"
LOG="$OUT/gpu_check.log"
status=0
step() { echo "== $* ==" | tee -a "$LOG"; }

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
} 2>&1 | tee -a "$LOG"

step build
PYTHON="$PY" bash scripts/gpu_build.sh --tests 2>&1 | tail -30 | tee -a "$LOG" \
  || { echo "build failed" | tee -a "$LOG"; exit 1; }

if [ "$STAGE" = all ] || [ "$STAGE" = tests ]; then
step "C++ tests"
build/gpu/gpulanes_cpp_tests --gtest_brief=1 2>&1 | tail -15 | tee -a "$LOG" || status=1

step "pytest (GPU tests included)"
"$PY" -m pytest -q -p no:cacheprovider -rs 2>&1 | tail -25 | tee -a "$LOG" || status=1
"$PY" -m pytest -q -p no:cacheprovider -m gpu 2>&1 | tail -5 | tee -a "$LOG" || status=1

fi

if [ "$STAGE" = all ] || [ "$STAGE" = bench ]; then
step "overhead benchmark (cuda)"
"$PY" benchmarks/overhead.py --device cuda --out "$OUT" 2>&1 | tee -a "$LOG" || status=1

step "demo (cuda)"
"$PY" examples/demo.py --device cuda --seconds 20 2>&1 | tail -10 | tee -a "$LOG" || status=1

step "policies benchmark (cuda)"
"$PY" benchmarks/policies.py --device cuda --out "$OUT" 2>&1 | tail -12 | tee -a "$LOG" || status=1
fi

if [ "$STAGE" = partitions ]; then
step "GPU partitions (green contexts)"
"$PY" benchmarks/gpu_partitions.py --out "$OUT" 2>&1 | tee -a "$LOG" || status=1

step "simulator fidelity (cuda)"
"$PY" benchmarks/sim_fidelity.py --device cuda --out "$OUT" 2>&1 | tail -8 | tee -a "$LOG" || status=1
fi

if [ "$STAGE" = plan ]; then
step "planner on the runtime (cuda)"
PROFILES=()
# The profile file gpu_partitions.py wrote for this kind of GPU (<tag>-profiles.json, the tag as
# benchmarks/_common.py's device_tag names it), when one is committed.
GPU_NAME="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr '[:upper:]' '[:lower:]')"
TAG=""
for known in h100 h200 a100 l4; do
  case "$GPU_NAME" in *"$known"*) TAG="$known" ;; esac
done
[ -n "$TAG" ] && [ -f "benchmarks/profiles/$TAG-profiles.json" ] &&
  PROFILES=(--profiles "benchmarks/profiles/$TAG-profiles.json")
"$PY" benchmarks/gpu_plan.py --device cuda --out "$OUT" "${PROFILES[@]}" 2>&1 | tail -8 | tee -a "$LOG" || status=1
fi

if [ "$STAGE" = mix ]; then
step "four-model mix: temporal vs streams vs green (cuda)"
"$PY" benchmarks/gpu_mix.py --device cuda --search --out "$OUT" 2>&1 | tail -8 | tee -a "$LOG" || status=1
fi

echo "gpu_check status: $status" | tee -a "$LOG"
exit "$status"
