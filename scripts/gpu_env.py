"""What a GPU machine offers gpulanes, read straight from the CUDA driver (ctypes), so that it
answers even when the build fails: GPU, driver, torch, SM count, and how the device's SMs split
into green-context groups (minSmPartitionSize, smCoscheduledAlignment, and a dry-run split into
groups of the minimum size), the toolchain a build needs (scripts/build_check.py: nvcc,
CUDA_HOME, cmake, the compiler, ...) and whether NVIDIA MPS is there. With a built gpulanes it
adds what gpulanes reads itself.

    python scripts/gpu_env.py [--out FILE]   # JSON on stdout (and to FILE)
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import shutil
import subprocess
import sys
from typing import Any, Dict


class _SmResource(ctypes.Structure):
    # CUdevResource of CUDA 13.0's cuda.h: a type tag, 92 bytes of padding, then the SM union
    # (smCount, minSmPartitionSize, smCoscheduledAlignment) in 48 bytes.
    _fields_ = [("type", ctypes.c_int), ("_pad", ctypes.c_ubyte * 92),
                ("smCount", ctypes.c_uint), ("minSmPartitionSize", ctypes.c_uint),
                ("smCoscheduledAlignment", ctypes.c_uint), ("_rest", ctypes.c_ubyte * 36)]


CU_DEV_RESOURCE_TYPE_SM = 1


def driver_split(device: int = 0) -> Dict[str, Any]:
    """Driver version, the device's SM resource and a dry-run split, or why not."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        return {"error": f"no CUDA driver: {e}"}
    out: Dict[str, Any] = {}
    version = ctypes.c_int()
    if cuda.cuInit(0) != 0 or cuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return {"error": "cuInit failed"}
    out["driver_api"] = f"{version.value // 1000}.{version.value % 1000 // 10}"
    dev = ctypes.c_int()
    if cuda.cuDeviceGet(ctypes.byref(dev), device) != 0:
        return {**out, "error": f"no device {device}"}
    if not hasattr(cuda, "cuDeviceGetDevResource"):
        return {**out, "error": "driver has no green-context API"}
    res = _SmResource()
    rc = cuda.cuDeviceGetDevResource(dev, ctypes.byref(res), CU_DEV_RESOURCE_TYPE_SM)
    if rc != 0:
        return {**out, "error": f"cuDeviceGetDevResource returned {rc}"}
    out.update(sm_count=res.smCount, min_sm_partition_size=res.minSmPartitionSize,
               sm_coscheduled_alignment=res.smCoscheduledAlignment)
    n = ctypes.c_uint()
    rc = cuda.cuDevSmResourceSplitByCount(None, ctypes.byref(n), ctypes.byref(res), None, 0,
                                          max(1, res.minSmPartitionSize))
    out["dry_run_split"] = {"rc": rc, "groups": n.value}
    if rc == 0 and n.value:
        groups = (_SmResource * n.value)()
        rest = _SmResource()
        rc = cuda.cuDevSmResourceSplitByCount(groups, ctypes.byref(n), ctypes.byref(res),
                                              ctypes.byref(rest), 0, max(1, res.minSmPartitionSize))
        out["split"] = {"rc": rc, "group_sms": sorted({g.smCount for g in groups[:n.value]}),
                        "groups": n.value, "remainder_sms": rest.smCount if rc == 0 else None}
    return out


def main() -> None:
    env: Dict[str, Any] = {"python": platform.python_version(), "cpu_cores": os.cpu_count(),
                           "cuda_home": os.environ.get("CUDA_HOME"),
                           "mps_control": shutil.which("nvidia-cuda-mps-control")}
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import build_check

    env["toolchain"] = {r["name"]: r["found"] if r["ok"] else "MISSING: " + r["found"]
                        for r in build_check.checks()}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        env["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.SubprocessError) as e:
        env["nvidia_smi"] = f"unavailable: {e}"
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            env.update(gpu=p.name, sm_count=p.multi_processor_count,
                       capability=f"{p.major}.{p.minor}", memory_gb=round(p.total_memory / 2**30, 1))
    except Exception as e:  # noqa: BLE001 - report whatever breaks
        env["torch_error"] = repr(e)
    env["driver"] = driver_split(0)
    try:
        import gpulanes as gl

        env["gpulanes"] = gl.__version__
        env["built_with_cuda"] = gl._C.built_with_cuda
        env["green_context_support"] = gl._C.green_context_support(0) or "yes"
        if env["green_context_support"] == "yes":
            env["green_sm_split"] = gl._C.green_sm_split(0)
    except Exception as e:  # noqa: BLE001 - not built yet, or no GPU
        env["gpulanes_error"] = repr(e)[:300]
    text = json.dumps(env, indent=2)
    print(text)
    if "--out" in sys.argv:
        with open(sys.argv[sys.argv.index("--out") + 1], "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
