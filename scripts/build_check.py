"""What building gpulanes needs, checked before the build: one line per piece, and for each
missing piece what to install. Used by scripts/gpu_build.sh (the lent GPU machine) and by
scripts/gpu_env.py (which records the toolchain in the GPU proof).

    python scripts/build_check.py [--eigen-dir DIR] [--json]

Exit status 1 when a required piece is missing. Required: torch >= 2.4, scikit-build-core,
CMake >= 3.26, ninja, a C++20 compiler, Eigen 3.4, and where torch is a CUDA build the CUDA
toolkit (nvcc and its headers). grpc++ is optional (without it gRPC is served from Python).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

CPU_TORCH = ("or use a CPU-only torch: pip install torch --index-url "
             "https://download.pytorch.org/whl/cpu")


def _version(cmd: List[str]) -> Optional[str]:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", out.stdout + out.stderr)
    return m.group(0) if m else None


def _at_least(version: Optional[str], need: tuple) -> bool:
    if not version:
        return False
    parts = tuple(int(p) for p in version.split(".")[:len(need)])
    return parts >= need


def _row(name: str, ok: bool, found: str, fix: str = "", required: bool = True) -> Dict[str, Any]:
    return {"name": name, "ok": ok, "found": found, "fix": "" if ok else fix, "required": required}


def cuda_root() -> Optional[str]:
    """The CUDA toolkit the build uses: CUDA_HOME, CUDA_PATH, /usr/local/cuda, else the folder
    above the real nvcc on PATH (as CMakeLists.txt looks for it), where its headers are."""
    nvcc = shutil.which("nvcc")
    above_nvcc = str(Path(os.path.realpath(nvcc)).parents[1]) if nvcc else None
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda",
                 above_nvcc):
        if root and Path(root, "include", "cuda_runtime_api.h").exists():
            return root
    return None


def checks(eigen_dir: Optional[str] = None) -> List[Dict[str, Any]]:
    rows = [_row("python", sys.version_info >= (3, 9), sys.version.split()[0], "Python >= 3.9")]
    torch_cuda = None
    try:
        import torch

        torch_cuda = torch.version.cuda
        rows.append(_row("torch", _at_least(torch.__version__, (2, 4)),
                         f"{torch.__version__} (CUDA {torch_cuda or 'none'})",
                         "pip install 'torch>=2.4' first, then build with --no-build-isolation"))
    except ImportError:
        rows.append(_row("torch", False, "missing",
                         "pip install 'torch>=2.4' first, then build with --no-build-isolation"))
    try:
        import scikit_build_core

        rows.append(_row("scikit-build-core", _at_least(scikit_build_core.__version__, (0, 10)),
                         scikit_build_core.__version__, "pip install 'scikit-build-core>=0.10'"))
    except ImportError:
        rows.append(_row("scikit-build-core", False, "missing", "pip install 'scikit-build-core>=0.10'"))
    cmake = shutil.which("cmake")
    v = _version([cmake, "--version"]) if cmake else None
    rows.append(_row("cmake", _at_least(v, (3, 26)), f"{v} ({cmake})" if cmake else "missing",
                     "pip install 'cmake>=3.26' (or apt install cmake from a recent release)"))
    ninja = shutil.which("ninja")
    rows.append(_row("ninja", bool(ninja), f"{_version([ninja, '--version'])} ({ninja})" if ninja
                     else "missing", "pip install ninja (or apt install ninja-build)"))
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    v = _version([cxx, "-dumpfullversion", "-dumpversion"]) if cxx else None
    rows.append(_row("c++ compiler", _at_least(v, (10,)), f"{v} ({cxx})" if cxx else "missing",
                     "a C++20 compiler: apt install g++ (GCC >= 10), or set CXX"))
    # What scripts/gpu_prepare.sh carries to the GPU machine (DEPS, default .deps) counts too.
    carried = Path(os.environ.get("DEPS", ".deps"), "eigen", "share", "eigen3", "cmake")
    eigen_candidates = ([Path(eigen_dir)] if eigen_dir else []) + [carried]
    prefix = os.environ.get("CONDA_PREFIX")
    eigen_candidates += [Path("/usr/share/eigen3/cmake"), Path("/usr/lib/cmake/eigen3"),
                         Path("/usr/local/share/eigen3/cmake")]
    if prefix:
        eigen_candidates.append(Path(prefix, "share", "eigen3", "cmake"))
    eigen = next((d for d in eigen_candidates if (d / "Eigen3Config.cmake").exists()), None)
    eigen_v = None
    if eigen is not None and (eigen / "Eigen3ConfigVersion.cmake").exists():
        m = re.search(r'PACKAGE_VERSION "([\d.]+)"', (eigen / "Eigen3ConfigVersion.cmake").read_text())
        eigen_v = m.group(1) if m else None
    rows.append(_row("eigen 3.4", _at_least(eigen_v, (3, 4)),
                     f"{eigen_v} ({eigen})" if eigen else "missing",
                     "Debian/Ubuntu: apt install libeigen3-dev; conda: conda install -c "
                     "conda-forge eigen; or pass -Ccmake.define.Eigen3_DIR=<dir of Eigen3Config.cmake>"))
    if torch_cuda:
        root = cuda_root()
        nvcc = shutil.which("nvcc") or (str(Path(root, "bin", "nvcc")) if root else None)
        nvcc_v = _version([nvcc, "--version"]) if nvcc and Path(nvcc).exists() else None
        found = f"{root}, nvcc {nvcc_v}" if root else "missing"
        same_major = nvcc_v is not None and nvcc_v.split(".")[0] == torch_cuda.split(".")[0]
        rows.append(_row("cuda toolkit", bool(root and nvcc_v and same_major), found,
                         f"torch is a CUDA {torch_cuda} build: install the CUDA {torch_cuda.split('.')[0]}.x "
                         f"toolkit and set CUDA_HOME (its include/ and bin/nvcc), {CPU_TORCH}"))
    grpc = Path("/usr/include/grpcpp/grpcpp.h").exists()
    rows.append(_row("grpc++ (optional)", grpc, "found" if grpc else "missing",
                     "apt install libgrpc++-dev protobuf-compiler protobuf-compiler-grpc for the "
                     "C++ gRPC front end (without it gRPC is served by grpcio)", required=False))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--eigen-dir", help="the directory of Eigen3Config.cmake to build with")
    ap.add_argument("--json", action="store_true", help="print the checks as JSON")
    args = ap.parse_args()
    rows = checks(args.eigen_dir)
    missing = [r for r in rows if r["required"] and not r["ok"]]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            state = "ok" if r["ok"] else "MISSING" if r["required"] else "absent"
            print(f"{state:<8} {r['name']:<18} {r['found']}" + (f"\n         -> {r['fix']}" if r["fix"] else ""))
        if missing:
            print(f"cannot build gpulanes: {', '.join(r['name'] for r in missing)} "
                  f"missing (see above)", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
