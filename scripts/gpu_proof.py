"""The GPU proof: every GPU feature of gpulanes in two device calls on the same warm machine (a
lent H100/H200, no network; 15 minutes of device time in all, the machine's 1-2 minute start
included, at most 10 minutes a call). scripts/gpu_proof.sh runs this file.

    bash scripts/gpu_proof.sh --plan        # JSON: each call's stages, their caps and its budget
    bash scripts/gpu_proof.sh --call 1      # env, build, pytest -m gpu, %smid probe, MPS pre-check
    bash scripts/gpu_proof.sh --call 2      # MPS tests, the four-way mix, SM curve + co-location
    bash scripts/gpu_proof.sh --call 2 --only mix     # rerun one stage (it needs the build)
    bash scripts/gpu_proof.sh --cpu --call 1          # dry run of the same stages on a CPU

Device calls (after `bash scripts/gpu_prepare.sh` here, once per checkout):
    run(command="bash scripts/gpu_proof.sh --call 1", carry=[".deps"], timeout_s=450)
    run(command="bash scripts/gpu_proof.sh --call 2", carry=[".deps"], timeout_s=450)
Call 2 reuses call 1's build, which a machine keeps only while it stays warm (30 s after a call).

Each stage runs in a process group of its own under its cap (capped again by what is left of
the call's budget). At the cap it gets SIGINT (pytest then still writes its JUnit file) and,
a grace period later, SIGKILL. Whatever a stage leaves behind (its processes, an MPS daemon it
started) is stopped before the next stage starts. After every stage `$OUT/proof-callN.json`
is rewritten: the environment and each stage's status, seconds, cap and, when it failed or was
cut, why. Each call writes at most 8 files to `$OUT` (the device tool brings back 8).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
MAX_BUDGET_S = 420  # per call (the issue's bound); both calls' caps + a 2-minute start <= 15 min
LEASE_S, START_S = 15 * 60, 120
MAX_FILES = 8       # what the device tool brings back from $OUT


@dataclass
class Stage:
    name: str
    cap_s: int
    what: str                          # one line: what it shows
    cuda: List[str]                    # argv on the GPU ({out}, {py}, {state} filled in)
    cpu: Optional[List[str]] = None    # argv of the CPU dry run (default: the same)
    junit: Optional[str] = None        # the JUnit file it writes to $OUT, if any
    env: Dict[str, str] = field(default_factory=dict)


def _pytest(junit: str, *paths: str) -> List[str]:
    # -v: a test that hangs is named in the log; 60 s per test, well inside the stage's cap.
    return ["{py}", "-m", "pytest", "-v", "-p", "no:cacheprovider", "-m", "gpu", "-rs",
            "--timeout=60", f"--junitxml={{out}}/{junit}", *paths]


CALLS: Dict[int, List[Stage]] = {
    1: [
        Stage("env", 15, "GPU, driver, torch, toolchain (nvcc, CUDA_HOME, cmake, compiler), SMs, "
              "green-context group size and alignment, a dry-run split",
              ["{py}", "scripts/gpu_env.py", "--out", "{state}/env.json"]),
        Stage("build", 200, "gpulanes built against the machine's torch; fails without CUDA",
              ["bash", "scripts/gpu_build.sh", "--require-gpu", "--log", "{out}/build.log"],
              cpu=["bash", "scripts/gpu_build.sh", "--configure-only", "--log", "{out}/build.log"]),
        Stage("pytest-gpu", 120, "every test marked gpu but the MPS ones",
              _pytest("pytest-gpu.xml", "tests/python", "--ignore=tests/python/test_mps.py"),
              junit="pytest-gpu.xml"),
        Stage("probe", 30, "%smid probe: green lanes own disjoint SMs, for layouts that fit",
              ["{py}", "benchmarks/gpu_partitions.py", "--device", "cuda", "--parts", "probe",
               "--name", "gpu-probe", "--out", "{out}"],
              cpu=["{py}", "benchmarks/gpu_partitions.py", "--device", "cpu", "--parts", "probe",
                   "--name", "gpu-probe", "--out", "{out}"]),
        Stage("mps-precheck", 20, "an MPS daemon starts and one MPS client lane serves",
              ["{py}", "scripts/mps_check.py", "--device", "cuda"],
              cpu=["{py}", "scripts/mps_check.py", "--device", "cpu"]),
    ],
    2: [
        Stage("env", 15, "the same machine's environment, now with gpulanes' view",
              ["{py}", "scripts/gpu_env.py", "--out", "{state}/env.json"]),
        Stage("build-reuse", 25, "call 1's build is still here (no rebuild)",
              ["bash", "scripts/gpu_build.sh", "--reuse", "--require-gpu"],
              cpu=["bash", "scripts/gpu_build.sh", "--reuse"]),
        Stage("pytest-mps", 100, "the MPS lanes' tests (a private daemon, workers as MPS clients)",
              _pytest("pytest-mps.xml", "tests/python/test_mps.py"), junit="pytest-mps.xml"),
        Stage("mix", 160, "four models: temporal vs streams vs green vs MPS at three fixed rates",
              ["{py}", "benchmarks/gpu_mix.py", "--device", "cuda", "--seconds", "3",
               "--rates", "0.4", "0.7", "1.0", "--out", "{out}"],
              cpu=["{py}", "benchmarks/gpu_mix.py", "--device", "cpu", "--seconds", "0.6",
                   "--rates", "0.2", "0.5", "--out", "{out}"]),
        Stage("partitions", 85, "ResNet-50 fp16 at 16/32/64/all SMs and one co-location pair",
              ["{py}", "benchmarks/gpu_partitions.py", "--device", "cuda", "--sms", "16", "32",
               "64", "full", "--pairs", "resnet50:vgg16", "--seconds", "3", "--parts",
               "sm_curve", "colocation", "--out", "{out}"],
              cpu=["{py}", "benchmarks/gpu_partitions.py", "--device", "cpu", "--sms", "full",
                   "--pairs", "resnet50:bert", "--seconds", "0.5", "--parts", "sm_curve",
                   "colocation", "--out", "{out}"]),
    ],
}


def plan() -> Dict[str, Any]:
    calls = {}
    for n, stages in CALLS.items():
        calls[str(n)] = {"budget_s": sum(s.cap_s for s in stages),
                         "stages": [{"stage": s.name, "cap_s": s.cap_s, "what": s.what}
                                    for s in stages]}
    return {"max_budget_s": MAX_BUDGET_S, "lease_s": LEASE_S, "machine_start_s": START_S,
            "calls": calls,
            "device_command": "bash scripts/gpu_proof.sh --call N (carry .deps)"}


def grace_s(limit: int) -> int:
    """Seconds between SIGINT and SIGKILL, within the stage's limit."""
    return max(1, min(10, limit // 5))


def junit_summary(path: Path) -> Optional[Dict[str, Any]]:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    counts = collections.Counter()
    failed, skipped_why = [], []
    for case in root.iter("testcase"):
        if case.get("name") is None:  # the test SIGINT interrupted: pytest leaves it unnamed
            counts["interrupted"] += 1
            continue
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        kinds = {child.tag for child in case}
        if kinds & {"failure", "error"}:
            counts["failed"] += 1
            child = next(c for c in case if c.tag in ("failure", "error"))
            message = (child.get("message") or child.tag).splitlines() or [child.tag]
            failed.append(f"{name}: {message[0][:200]}")
        elif "skipped" in kinds:
            counts["skipped"] += 1
            skipped_why.append(next(c for c in case if c.tag == "skipped").get("message", ""))
        else:
            counts["passed"] += 1
    return {"passed": counts["passed"], "failed": counts["failed"], "skipped": counts["skipped"],
            "interrupted": counts["interrupted"], "failures": failed[:20],
            "skip_reasons": sorted(set(skipped_why))[:10]}


def leftover_mps_daemons(tmp: Path, control: Optional[str]) -> List[str]:
    """Quits the private MPS daemons (gpulanes-mps-* under `tmp`) whose runtime is gone, and
    removes their directories; returns what it stopped. A stage cut mid-run leaves one. (The
    next runtime's MpsDaemon::acquire does the same; this reports it and leaves nothing after
    the last stage.) A directory without an owner file keeps the log of a daemon that failed."""
    stopped = []
    for root in sorted(tmp.glob("gpulanes-mps-*")):
        try:
            pid = int((root / "owner").read_text().strip())
        except (OSError, ValueError):
            continue
        try:
            os.kill(pid, 0)
            continue  # its runtime still runs
        except ProcessLookupError:
            pass
        except OSError:
            continue
        if (root / "pipe" / "control").exists() and control:
            env = {**os.environ, "CUDA_MPS_PIPE_DIRECTORY": str(root / "pipe"),
                   "CUDA_MPS_LOG_DIRECTORY": str(root / "log")}
            try:
                subprocess.run([control], input="quit\n", text=True, env=env, timeout=15,
                               capture_output=True)
            except (OSError, subprocess.SubprocessError):
                pass
        shutil.rmtree(root, ignore_errors=True)
        stopped.append(root.name)
    return stopped


class Proof:
    """One call of the proof: owns its stages' rows, its log in $OUT and a scratch folder
    outside $OUT (the environment's JSON). Runs on the main thread; one reader thread per stage
    copies the stage's output to the console, the log and the tail its `why` is taken from."""

    def __init__(self, call: int, mode: str, out: Path, py: str, budget_s: int,
                 only: Optional[List[str]]) -> None:
        self.call, self.mode, self.out, self.py = call, mode, out, py
        self.stages = [s for s in CALLS[call] if not only or s.name in only]
        self.budget_s = budget_s
        self.state = Path(tempfile.mkdtemp(prefix="gpulanes-proof-"))  # not in $OUT (8 files)
        self.log = open(out / f"proof-call{call}.log", "a", buffering=1)
        self.rows: List[Dict[str, Any]] = []
        self.start = time.monotonic()

    def write_summary(self) -> None:
        env: Dict[str, Any] = {}
        try:
            env = json.loads((self.state / "env.json").read_text())
        except (OSError, ValueError):
            pass
        doc = {"mode": self.mode, "call": self.call, "budget_s": self.budget_s, "env": env,
               "stages": self.rows, "seconds": round(time.monotonic() - self.start, 1)}
        (self.out / f"proof-call{self.call}.json").write_text(json.dumps(doc, indent=2) + "\n")

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.log.write(text + "\n")

    def run_stage(self, stage: Stage) -> Dict[str, Any]:
        left = int(self.budget_s - (time.monotonic() - self.start))
        limit = min(stage.cap_s, left)
        row: Dict[str, Any] = {"stage": stage.name, "cap_s": stage.cap_s, "limit_s": max(0, limit)}
        if limit < 5:
            self.say(f"== {stage.name}: skipped, the call's budget is spent ==")
            return {**row, "status": "skipped", "rc": None, "seconds": 0,
                    "why": f"the call's budget of {self.budget_s} s was spent before it"}
        argv = [a.format(out=self.out, py=self.py, state=self.state)
                for a in (stage.cpu if self.mode == "cpu" and stage.cpu else stage.cuda)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OUT": str(self.out), **stage.env}
        if self.mode == "cuda":
            env["GPULANES_REQUIRE_GPU"] = "1"  # a GPU test that would skip for want of CUDA fails
        self.say(f"== {stage.name} (limit {limit}s): {' '.join(argv)} ==")
        t0 = time.monotonic()
        tail: collections.deque = collections.deque(maxlen=40)
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace",
                                start_new_session=True)

        def pump() -> None:
            for line in proc.stdout:  # type: ignore[union-attr]
                sys.stdout.write(line)
                self.log.write(line)
                tail.append(line.rstrip())

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        grace = grace_s(limit)
        cut = False
        try:
            proc.wait(timeout=limit - grace)
        except subprocess.TimeoutExpired:
            cut = True
            self._signal(proc, signal.SIGINT)  # pytest writes its JUnit file on SIGINT
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signal(proc, signal.SIGKILL)
                proc.wait()
        self._signal(proc, signal.SIGKILL)  # whatever of the group is still there
        reader.join(timeout=5)
        seconds = round(time.monotonic() - t0, 1)
        row.update(rc=proc.returncode, seconds=seconds)
        stopped = leftover_mps_daemons(Path(tempfile.gettempdir()),
                                       shutil.which("nvidia-cuda-mps-control"))
        if stopped:
            row["mps_daemons_stopped"] = stopped
        lines = [l for l in tail if l.strip()]
        if cut:
            row["status"] = "timeout"
            row["why"] = (f"cut at its limit of {limit} s (SIGINT, SIGKILL {grace} s later); "
                          f"last output: {lines[-1][:300] if lines else '(none)'}")
        elif proc.returncode != 0:
            row["status"] = "failed"
            row["why"] = " | ".join(lines[-3:])[:600] or f"exit status {proc.returncode}"
        else:
            row["status"] = "ok"
        if stage.junit:
            summary = junit_summary(self.out / stage.junit)
            row["tests"] = summary
            if summary is None:
                row["status"], row["why"] = ("failed" if row["status"] == "ok" else row["status"],
                                             row.get("why", "") + " (no JUnit file written)")
            elif self.mode == "cuda" and summary["passed"] == 0 and row["status"] == "ok":
                row["status"] = "failed"
                row["why"] = "no GPU test passed: " + "; ".join(summary["skip_reasons"])[:400]
        self.say(f"== {stage.name}: {row['status']} (rc {proc.returncode}) after {seconds}s ==")
        return row

    @staticmethod
    def _signal(proc: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    def run(self) -> int:
        self.say(f"gpu_proof call {self.call} ({self.mode}): budget {self.budget_s} s, stages "
                 f"{[s.name for s in self.stages]}")
        for stage in self.stages:
            self.rows.append(self.run_stage(stage))
            self.write_summary()
        bad = [r["stage"] for r in self.rows if r["status"] != "ok"]
        self.say(f"gpu_proof call {self.call} ({self.mode}): {len(bad)} stage(s) not ok {bad}; "
                 f"{time.monotonic() - self.start:.0f}s in all")
        files = sorted(p.name for p in self.out.iterdir())
        if len(files) > MAX_FILES:
            self.say(f"warning: {len(files)} files in $OUT, the device tool brings back {MAX_FILES}")
        shutil.rmtree(self.state, ignore_errors=True)
        return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--plan", action="store_true", help="print each call's stages and budget")
    ap.add_argument("--call", type=int, choices=sorted(CALLS))
    ap.add_argument("--cpu", action="store_true", help="dry run on the CPU with tiny sizes")
    ap.add_argument("--only", nargs="+", help="run only these stages of the call")
    args = ap.parse_args()
    if args.plan:
        print(json.dumps(plan(), indent=2))
        return 0
    if args.call is None:
        ap.error("give --call 1 or --call 2 (or --plan)")
    names = [s.name for s in CALLS[args.call]]
    if args.only and set(args.only) - set(names):
        ap.error(f"call {args.call} has the stages {names}")
    out = Path(os.environ.get("OUT") or "/tmp/gpulanes-proof")
    out.mkdir(parents=True, exist_ok=True)
    budget = int(os.environ.get("BUDGET_S") or plan()["calls"][str(args.call)]["budget_s"])
    return Proof(args.call, "cpu" if args.cpu else "cuda", out, os.environ.get("PYTHON") or sys.executable,
                 budget, args.only).run()


if __name__ == "__main__":
    sys.exit(main())
