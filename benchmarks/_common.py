"""What every benchmark records beside its numbers: device, versions, date and command."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import torch

from gpulanes.evaluation import peak_search  # noqa: E402,F401  (the benchmarks' peak search)

RESULTS = Path(__file__).resolve().parent / "results"


def _cpu_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        m = re.search(r"model name\s*:\s*(.+)", text)
        return m.group(1).strip() if m else platform.processor()
    except OSError:
        return platform.processor()


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).parent, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=Path(__file__).parent,
                               timeout=5).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: str) -> Dict[str, Any]:
    import gpulanes
    env = {
        "device": device,
        "cpu": _cpu_name(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": {
            "gpulanes": gpulanes.__version__,
            "git_commit": _git_commit(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name] + sys.argv),
    }
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(0)
        env["versions"]["cuda"] = torch.version.cuda
    return env


def current_rss_mb() -> float:
    """This process's resident memory now, MB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measured_profiles(device: str, models: Dict[str, Any], max_batch: int) -> Dict[str, Any]:
    """{name: (module, example)} -> each model's latency profile, measured once on one
    whole-device lane (runs that set these profiles start in a second)."""
    import gpulanes as gl

    probe = gl.Runtime(device=device, profile_cache=False)
    for name, (module, example) in models.items():
        probe.register(name, module, slo_ms=60_000, example_inputs=example,
                       max_batch_size=max_batch)
    probe.start(progress=False)
    out = {name: probe.profile(name) for name in models}
    probe.shutdown()
    return out


def traced(specs: Dict[str, Any]) -> Dict[str, Any]:
    """{name: (module, example input)} -> {name: (TorchScript trace, example)}, in eval mode."""
    out = {}
    for name, (model, example) in specs.items():
        with torch.no_grad():
            out[name] = (torch.jit.trace(model.eval(), example, check_trace=False), example)
    return out


def device_tag(env: Dict[str, Any]) -> str:
    if "gpu" in env:
        name = env["gpu"].lower()
        for known in ("h100", "h200", "a100", "l4"):
            if known in name:
                return known
        return re.sub(r"[^a-z0-9]+", "-", name).strip("-")
    return f"cpu{env['cpu_cores']}"


def write_result(name: str, env: Dict[str, Any], results: Dict[str, Any],
                 out_dir: Path = RESULTS) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    day = env["date"][:10]
    path = out_dir / f"{name}-{device_tag(env)}-{day}.json"
    path.write_text(json.dumps({"benchmark": name, **env, "results": results}, indent=2) + "\n")
    return path


def mobilenet_v3_96():
    """MobileNetV3-Small (random weights) traced at 96x96 in eval mode, and its example batch of
    one: the CPU benchmarks' real model."""
    import torchvision

    torch.manual_seed(0)
    example = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        model = torch.jit.trace(torchvision.models.mobilenet_v3_small(weights=None).eval(),
                                example, check_trace=False)
    return model, example
