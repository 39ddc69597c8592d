"""Triton's load generator, perf_analyzer, for benchmarks/serve.py and the tests that drive
`gpulanes serve` with it. It is not installable by name (the `perf-analyzer` PyPI name is a
placeholder): it is taken once from the tritonclient 2.41.0 manylinux wheel, with libcudart.so.12
from the nvidia-cuda-runtime-cu12 wheel beside it, into ~/.cache/gpulanes/perf_analyzer (not
$GPULANES_CACHE_DIR, which tests point elsewhere). It also needs Debian's libb64-0d.
scripts/bootstrap.sh fetches it.

    python benchmarks/perf_analyzer.py      # fetches it if missing; prints its path
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Dict

PA_DIR = Path.home() / ".cache" / "gpulanes" / "perf_analyzer"


def perf_analyzer(fetch: bool = True) -> Path:
    """The perf_analyzer binary (fetched once, unless ``fetch`` is false: then it raises
    FileNotFoundError when it is missing); its libraries are in the same directory."""
    binary = PA_DIR / "perf_analyzer"
    if binary.exists() and (PA_DIR / "libcudart.so.12").exists():
        return binary
    if not fetch:
        raise FileNotFoundError(f"{binary} is missing: run scripts/bootstrap.sh (or python "
                                "benchmarks/perf_analyzer.py) once with network access")
    PA_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "-d", tmp]
        subprocess.run(pip + ["--platform", "manylinux1_x86_64", "tritonclient==2.41.0"],
                       check=True)
        subprocess.run(pip + ["nvidia-cuda-runtime-cu12"], check=True)
        for wheel in Path(tmp).glob("*.whl"):
            with zipfile.ZipFile(wheel) as z:
                for name in z.namelist():
                    if name.endswith("bin/perf_analyzer") or name.endswith("libcudart.so.12"):
                        (PA_DIR / Path(name).name).write_bytes(z.read(name))
    binary.chmod(0o755)
    if not Path("/usr/lib/x86_64-linux-gnu/libb64.so.0d").exists() and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", "libb64-0d"], check=False,
                       stdout=subprocess.DEVNULL)
    return binary


def environment() -> Dict[str, str]:
    """The environment to run perf_analyzer in (its libraries on LD_LIBRARY_PATH)."""
    return {**os.environ, "LD_LIBRARY_PATH": f"{PA_DIR}:{os.environ.get('LD_LIBRARY_PATH', '')}"}


if __name__ == "__main__":
    print(perf_analyzer())
