"""scripts/gpu_proof.sh: the GPU proof's two device calls, dry-run on the CPU with tiny sizes so
that the commands a lent GPU gets cannot rot between GPU sessions; its plan fits the lease; a
stage that hangs or fails is cut and explained; and the GPU pieces that can be checked without
a GPU (the probe's cubin, the worker's library path, layouts on odd splits) are."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import gpulanes as gl
from conftest import halves

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_proof  # noqa: E402


def proof(*args, out, timeout=600, **env):
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_proof.sh"), *args], cwd=ROOT,
                          env={**os.environ, "OUT": str(out), "PYTHON": sys.executable, **env},
                          capture_output=True, text=True, timeout=timeout)


def test_the_plan_fits_two_calls_and_the_machines_start_in_the_lease(tmp_path):
    done = proof("--plan", out=tmp_path)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    calls = plan["calls"]
    assert sorted(calls) == ["1", "2"]
    for call in calls.values():
        assert sum(s["cap_s"] for s in call["stages"]) <= call["budget_s"] <= 420
    # Both calls at their caps and the machine's start fit the lease (a rerun fits in what the
    # stages leave under their caps).
    assert sum(c["budget_s"] for c in calls.values()) + plan["machine_start_s"] <= plan["lease_s"] == 900
    names = {n: [s["stage"] for s in c["stages"]] for n, c in calls.items()}
    assert names["1"] == ["env", "build", "pytest-gpu", "probe", "mps-precheck"]
    assert names["2"][:2] == ["env", "build-reuse"]
    assert {"pytest-mps", "mix", "partitions"} <= set(names["2"])


@pytest.fixture(scope="module")
def deps(tmp_path_factory):
    """Eigen and GoogleTest as scripts/gpu_prepare.sh packs them for the GPU machine."""
    where = tmp_path_factory.mktemp("deps") / "deps"
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_prepare.sh")], cwd=ROOT,
                          env={**os.environ, "DEPS": str(where)}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return where


def test_call_1_runs_every_stage_on_the_cpu(tmp_path, deps):
    done = proof("--cpu", "--call", "1", out=tmp_path, DEPS=str(deps),
                 BUILD_DIR=str(tmp_path.parent / "configure"))
    report = json.loads((tmp_path / "proof-call1.json").read_text())
    assert done.returncode == 0, (report["stages"], done.stdout[-4000:])
    assert report["mode"] == "cpu" and report["call"] == 1
    assert [s["stage"] for s in report["stages"]] == ["env", "build", "pytest-gpu", "probe",
                                                      "mps-precheck"]
    assert all(s["status"] == "ok" for s in report["stages"]), report["stages"]
    env = report["env"]
    assert env["torch"] and env["toolchain"]["cmake"] and "cuda_home" in env
    # The device's build line, configured here: with CUDA where torch has it, the carried Eigen.
    build = (tmp_path / "build.log").read_text()
    assert ("CUDA lanes: ON" in build) == bool(torch.version.cuda)
    assert "Configuring done" in build
    tests = report["stages"][2]["tests"]
    assert tests["failed"] == 0 and tests["skipped"] > 0  # collected, skipped without CUDA
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) <= 8 and not any(f.startswith(".") for f in files), files
    probe = json.loads(next(tmp_path.glob("gpu-probe-*.json")).read_text())
    for row in probe["results"]["probe"]:  # every layout it would probe fits the split
        assert sum(row["groups"]) <= probe["results"]["split"]["groups"]
    assert "result right" in (tmp_path / "proof-call1.log").read_text()  # the pre-check's lane


def test_call_2_runs_every_stage_on_the_cpu(tmp_path):
    done = proof("--cpu", "--call", "2", out=tmp_path)
    report = json.loads((tmp_path / "proof-call2.json").read_text())
    assert done.returncode == 0, (report["stages"], done.stdout[-4000:])
    assert all(s["status"] == "ok" for s in report["stages"]), report["stages"]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) <= 8, files
    assert "pytest-mps.xml" in files
    mix = json.loads(next(tmp_path.glob("gpu-mix-*.json")).read_text())["results"]
    assert mix["arrivals"] == "poisson" and len(mix["rates"]) == 2
    for config in ("temporal", "streams"):  # one runtime each, served at every rate
        points = mix["configs"][config]["points"]
        assert [p["rate"] for p in points] == mix["rates"]
        assert all(0 <= p["worst_attainment"] <= 1 for p in points)
    parts = json.loads(next(tmp_path.glob("gpu-partitions-*.json")).read_text())["results"]
    assert parts["sm_curve"]["rows"] and parts["colocation"]["slowdown"]["resnet50"]["bert"] > 0


def test_a_stage_past_the_budget_is_cut_and_the_rest_accounted_for(tmp_path):
    done = proof("--cpu", "--call", "2", out=tmp_path, BUDGET_S="20", timeout=300)
    assert done.returncode != 0
    stages = json.loads((tmp_path / "proof-call2.json").read_text())["stages"]
    assert len(stages) == 5  # every stage is accounted for, run or not
    assert stages[0]["status"] == "ok"
    cut = [s for s in stages if s["status"] in ("timeout", "skipped")]
    assert cut and all(s["why"] for s in cut)


def write_stage_tests(tmp_path):
    (tmp_path / "test_stage.py").write_text(textwrap.dedent("""
        import time
        import pytest

        @pytest.mark.gpu
        def test_quick():
            pass

        @pytest.mark.gpu
        def test_hangs():
            time.sleep(600)
    """))
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers = gpu: x\n")


def run_one(tmp_path, stage, budget=60):
    out = tmp_path / "out"
    out.mkdir()
    p = gpu_proof.Proof(1, "cpu", out, sys.executable, budget, None)
    try:
        return p.run_stage(stage), out
    finally:
        p.log.close()


def test_a_hanging_test_is_interrupted_and_its_junit_file_still_written(tmp_path):
    write_stage_tests(tmp_path)
    argv = ["{py}", "-m", "pytest", "-v", "-p", "no:cacheprovider", "-c", str(tmp_path / "pytest.ini"),
            "--junitxml={out}/t.xml", str(tmp_path / "test_stage.py")]
    row, out = run_one(tmp_path, gpu_proof.Stage("t", 12, "a test that hangs", argv, junit="t.xml"))
    assert row["status"] == "timeout" and "cut at its limit of 12 s" in row["why"]
    assert row["seconds"] < 30
    assert row["tests"]["passed"] == 1 and row["tests"]["interrupted"] == 1  # SIGINT: reported
    assert "test_hangs" in (out / "proof-call1.log").read_text()  # -v names the test it was in


def test_a_failed_stage_says_why(tmp_path):
    argv = ["{py}", "-c", "import sys; print('checking'); sys.exit('no usable GPU: torch says no')"]
    row, _ = run_one(tmp_path, gpu_proof.Stage("f", 20, "fails", argv))
    assert row["status"] == "failed" and row["rc"] == 1
    assert "no usable GPU: torch says no" in row["why"]


def test_a_stage_with_every_gpu_test_skipped_fails_on_the_gpu(tmp_path):
    (tmp_path / "test_skip.py").write_text(
        "import pytest\n@pytest.mark.skip(reason='needs CUDA')\ndef test_s():\n    pass\n")
    argv = ["{py}", "-m", "pytest", "-p", "no:cacheprovider", "--junitxml={out}/s.xml",
            str(tmp_path / "test_skip.py")]
    out = tmp_path / "out"
    out.mkdir()
    p = gpu_proof.Proof(1, "cuda", out, sys.executable, 60, None)
    row = p.run_stage(gpu_proof.Stage("s", 30, "skips", argv, junit="s.xml"))
    p.log.close()
    assert row["status"] == "failed" and "no GPU test passed: needs CUDA" in row["why"]


def test_a_cut_stages_mps_daemon_is_stopped_before_the_next(tmp_path):
    # A private daemon whose runtime died (its owner pid is gone) and one whose runtime runs.
    calls = tmp_path / "calls.log"
    control = tmp_path / "nvidia-cuda-mps-control"
    control.write_text(f"#!/bin/sh\nread cmd; echo \"$cmd $CUDA_MPS_PIPE_DIRECTORY\" >> {calls}\n")
    control.chmod(0o755)
    dead = subprocess.Popen(["true"])
    dead.wait()
    for name, owner in (("gpulanes-mps-dead", dead.pid), ("gpulanes-mps-live", os.getpid())):
        (tmp_path / name / "pipe").mkdir(parents=True)
        (tmp_path / name / "pipe" / "control").touch()
        (tmp_path / name / "owner").write_text(str(owner))
    stopped = gpu_proof.leftover_mps_daemons(tmp_path, str(control))
    assert stopped == ["gpulanes-mps-dead"]
    assert calls.read_text().split() == ["quit", str(tmp_path / "gpulanes-mps-dead" / "pipe")]
    assert not (tmp_path / "gpulanes-mps-dead").exists() and (tmp_path / "gpulanes-mps-live").exists()


@pytest.mark.skipif(not torch.version.cuda, reason="a CPU-only torch has no NVRTC")
def test_the_smid_probe_compiles_to_a_cubin_for_the_device_architecture():
    import sm_probe

    image = sm_probe.cubin("sm_90")
    assert image[:4] == b"\x7fELF"  # machine code the driver loads as it is: no PTX JIT
    assert b"probe" in image and b".version" not in image[:4096]


def test_the_worker_finds_every_library_it_links_through_its_own_path():
    # A worker that cannot find the CUDA runtime beside torch dies at start on a GPU machine
    # whose loader does not know the toolkit: every library it needs must be on its RUNPATH.
    worker = Path(gl._C.__file__).with_name("gpulanes_worker")
    if not worker.exists():
        from gpulanes._options import _worker_path

        worker = Path(_worker_path())
    dyn = subprocess.run(["readelf", "-d", str(worker)], capture_output=True, text=True).stdout
    needed = re.findall(r"\(NEEDED\).*\[(.+)\]", dyn)
    runpath = re.findall(r"\((?:RUNPATH|RPATH)\).*\[(.+)\]", dyn)
    assert needed and runpath, dyn
    dirs = [Path(d.replace("$ORIGIN", str(worker.parent))) for d in runpath[0].split(":")]
    system = ("libc.so", "libm.so", "libstdc++.so", "libgcc_s.so", "libdl.so", "libpthread.so",
              "librt.so", "ld-linux")
    for lib in needed:
        if lib.startswith(system):
            continue
        assert any((d / lib).exists() for d in dirs), f"{lib} is not in {runpath[0]}"


@pytest.mark.parametrize("group_sms,groups,device_sms", [(8, 16, 132), (8, 15, 132), (16, 7, 132),
                                                         (8, 3, 30)])
def test_the_gpu_tests_layouts_fit_odd_splits(group_sms, groups, device_sms):
    import gpu_partitions

    split = {"group_sms": group_sms, "groups": groups, "device_sms": device_sms,
             "usable_sms": group_sms * groups}
    assert sum(gl._C.green_groups_for(group_sms, groups, device_sms, [halves(split)] * 2)) <= groups
    for layout in gpu_partitions.probe_layouts(split):
        assert sum(gl._C.green_groups_for(group_sms, groups, device_sms, layout)) <= groups
    if groups % 2:  # what the tests asked before: half of the usable SMs, which does not fit
        with pytest.raises(gl.InvalidInput, match="this fits"):
            gl._C.green_groups_for(group_sms, groups, device_sms, [split["usable_sms"] // 2] * 2)


def test_the_build_check_names_each_missing_piece_and_how_to_get_it(tmp_path):
    # A PATH with python alone: no cmake, no ninja, no compiler, no nvcc.
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").symlink_to(sys.executable)
    env = {k: v for k, v in os.environ.items() if k not in ("CXX", "CUDA_HOME", "CUDA_PATH")}
    done = subprocess.run([str(tmp_path / "bin" / "python"), str(ROOT / "scripts" / "build_check.py")],
                          env={**env, "PATH": str(tmp_path / "bin")}, capture_output=True, text=True)
    assert done.returncode == 1
    lines = done.stdout
    for piece, fix in (("cmake", "pip install 'cmake>=3.26'"), ("ninja", "pip install ninja"),
                       ("c++ compiler", "apt install g++")):
        assert re.search(rf"MISSING\s+{re.escape(piece)}", lines), lines
        assert fix in lines
    assert "cannot build gpulanes:" in done.stderr and "ninja" in done.stderr
    ok = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_check.py"), "--json"],
                        capture_output=True, text=True)
    rows = {r["name"]: r for r in json.loads(ok.stdout)}
    assert ok.returncode == 0 and rows["eigen 3.4"]["ok"] and rows["cmake"]["ok"]  # this machine builds
    if torch.version.cuda:
        assert rows["cuda toolkit"]["ok"]


def test_gpu_tests_fail_instead_of_skipping_when_the_proof_requires_a_gpu():
    if torch.cuda.is_available() and gl._C.cuda_lane_support():
        pytest.skip("a GPU is here: the GPU tests run")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(ROOT / "tests" / "python" / "test_gpu.py")], cwd=ROOT,
                          env={**os.environ, "GPULANES_REQUIRE_GPU": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode != 0
    assert "GPULANES_REQUIRE_GPU=1 but the GPU tests cannot run" in done.stdout + done.stderr
