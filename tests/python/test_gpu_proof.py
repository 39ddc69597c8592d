"""scripts/gpu_proof.sh --cpu: the GPU proof's stages, dry-run on the CPU with tiny sizes, so the
one command a lent GPU gets cannot rot between GPU sessions."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_proof_runs_every_stage_on_the_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_proof.sh"), "--cpu"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    log = (tmp_path / "proof.log").read_text()
    assert done.returncode == 0, log[-4000:] + done.stderr[-2000:]
    proof = json.loads((tmp_path / "proof.json").read_text())
    assert proof["mode"] == "cpu"
    assert [s["stage"] for s in proof["stages"]] == ["env", "build", "pytest-gpu", "probe", "mix",
                                                     "partitions", "pytest-mps"]
    assert all(s["status"] == "ok" for s in proof["stages"]), proof["stages"]
    assert proof["env"]["torch"] and "green_context_support" in proof["env"]
    # What comes back from a device call: at most 8 files, none hidden.
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) <= 8 and not any(f.startswith(".") for f in files), files
    assert "pytest-gpu.xml" in files and "pytest-mps.xml" in files
    probe = json.loads(next(tmp_path.glob("gpu-probe-*.json")).read_text())
    for row in probe["results"]["probe"]:  # every layout it would probe fits the split
        assert sum(row["groups"]) <= probe["results"]["split"]["groups"]
    mix = json.loads(next(tmp_path.glob("gpu-mix-*.json")).read_text())
    for config in ("temporal", "streams"):  # searched (this machine's speed is not the point)
        tried = mix["results"]["configs"][config]["tried"]
        assert tried and all(0 <= row["worst_attainment"] <= 1 for row in tried)
    parts = json.loads(next(tmp_path.glob("gpu-partitions-*.json")).read_text())["results"]
    assert parts["sm_curve"]["rows"] and parts["colocation"]["slowdown"]["resnet50"]["bert"] > 0


def test_a_stage_that_runs_past_the_budget_is_cut_and_reported(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "BUDGET_S": "12"}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_proof.sh"), "--cpu"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    stages = json.loads((tmp_path / "proof.json").read_text())["stages"]
    assert len(stages) == 7  # every stage is accounted for, run or not
    assert stages[0]["status"] == "ok"
    assert any(s["status"] == "timeout" for s in stages)
