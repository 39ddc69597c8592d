"""The wheel, installed into an environment of its own: it imports and serves (a process lane
too, so the worker finds its libraries from where the wheel put it), and under a torch other
than the one it was built for it refuses to import in one line. The wheel is made from the
build scripts/bootstrap.sh keeps in build/dev (nothing is compiled again)."""

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    build = Path(os.environ.get("GPULANES_CPP_TESTS", ROOT / "build" / "dev" / "x")).parent
    if not (build / "CMakeCache.txt").exists():
        pytest.skip(f"no build in {build} to make the wheel from (scripts/bootstrap.sh makes it)")
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation",
                           "--no-deps", "-w", str(out), f"-Cbuild-dir={build}",
                           "-Ccmake.define.GPULANES_BUILD_TESTS=ON", "-Ccmake.build-type=Release",
                           str(ROOT)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return next(out.glob("gpulanes-*.whl"))


@pytest.fixture(scope="module")
def env(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed and this environment's torch (and its other
    dependencies) visible behind it."""
    root = tmp_path_factory.mktemp("venv")
    venv.create(root, with_pip=False)
    site = next(root.glob("lib/python*/site-packages"))
    theirs = Path(torch.__file__).parents[1]
    (site / "deps.pth").write_text(str(theirs) + "\n")  # after site: the wheel's gpulanes wins
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                           "--target", str(site), str(wheel)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def run(env: Path, code: str, **extra) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GPULANES_WORKER")}
    return subprocess.run([str(env / "bin" / "python"), "-c", code], capture_output=True,
                          text=True, timeout=300, cwd=env, env={**clean, **extra})


def test_the_wheel_imports_and_serves_in_an_environment_of_its_own(env):
    code = """
import torch, gpulanes as gl
rt = gl.Runtime(device="cpu", isolation="process", profile_cache=False)
rt.register("same", torch.jit.script(torch.nn.Identity()), slo_ms=10_000,
            example_inputs=torch.zeros(1, 4))
with rt:
    print(rt.infer("same", torch.ones(4)).tolist(), rt.lanes()[0]["kind"], gl._C.__file__)
"""
    done = run(env, code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("[1.0, 1.0, 1.0, 1.0] cpu-process " + str(env)), done.stdout


def test_the_wheel_refuses_another_torch_in_one_line(env, tmp_path):
    # Another torch, as far as gpulanes can tell before it loads its extension.
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("__version__ = '2.4.0'\n")
    done = run(env, "import gpulanes", PYTHONPATH=str(tmp_path))
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        f"ImportError: gpulanes was built against torch {torch.__version__}, but torch 2.4.0 is "
        "installed: rebuild gpulanes against this torch (from its source: pip install "
        "--no-build-isolation --no-deps --force-reinstall .)")


def test_the_wheel_names_the_torch_it_was_built_against(wheel):
    # A local version label and a pin, as packages built against torch carry: pip refuses to
    # install the wheel next to another torch instead of leaving it to fail at import.
    import re
    import zipfile
    public = torch.__version__.split("+")[0]
    label = "torch" + re.sub(r"[^A-Za-z0-9.]", ".", torch.__version__.replace("+", "."))
    assert f"+{label}-" in wheel.name, wheel.name
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    assert f"Requires-Dist: torch=={public}\n" in meta, meta[:2000]
    assert re.search(rf"^Version: \d+\.\d+\.\d+\+{re.escape(label)}$", meta, re.M), meta[:500]
