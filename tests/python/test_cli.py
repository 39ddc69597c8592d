"""The `gpulanes` command: usage, --version, the serve command's help and example config, and a
missing extra reported in one line before anything loads."""

import subprocess
import sys
from pathlib import Path

import torch

import gpulanes as gl
from gpulanes import __main__ as cli

ROOT = Path(__file__).resolve().parents[2]


def run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "gpulanes", *args], capture_output=True,
                          text=True, timeout=120, **kw)


def test_help_and_version():
    done = run("--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: gpulanes")
    assert "serve CONFIG.toml" in done.stdout and "--version" in done.stdout
    done = run("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"gpulanes {gl.__version__} (torch {torch.__version__}, " + (
        f"CUDA {torch.version.cuda})" if gl._C.built_with_cuda else "no CUDA)")
    done = run("frobnicate")
    assert done.returncode == 2 and "unknown command 'frobnicate'" in done.stderr
    assert run().returncode == 2


def test_serve_help_points_to_the_config_reference_and_prints_the_example():
    done = run("serve", "--help")
    assert done.returncode == 0 and "--example-config" in done.stdout
    assert "Serving over the network" in done.stdout.replace("\n", " ").replace("  ", " ")
    example = run("serve", "--example-config")
    assert example.returncode == 0
    # The example shipped in the package is the one in examples/ (and loads as a config).
    assert example.stdout == (ROOT / "examples" / "serve" / "serve.toml").read_text()
    done = run("serve")
    assert done.returncode == 2 and "CONFIG.toml" in done.stderr


def test_a_missing_extra_is_one_line_before_anything_loads(monkeypatch):
    real = cli.importlib.util.find_spec
    monkeypatch.setattr(cli.importlib.util, "find_spec",
                        lambda name, *a: None if name == "starlette" else real(name, *a))
    assert cli.missing_extra("serve") == ("gpulanes serve: needs the 'server' extra (missing: "
                                          "starlette): pip install \"gpulanes[server]\"")
    assert cli.main(["serve", str(ROOT / "examples" / "serve" / "serve.toml")]) == 2
    assert cli.main(["serve", "--example-config"]) == 0  # needs no extra


def test_repr_says_state_device_lanes_and_models():
    from conftest import Affine, scripted

    rt = gl.Runtime(device="cpu", cpu_lanes=1, profile_cache=False)
    assert repr(rt) == ("<gpulanes.Runtime not started device=cpu policy=deadline "
                        "partitioning=auto models=[]>")
    rt.register("a", scripted(Affine()), slo_ms=1000, example_inputs=torch.zeros(1, 4))
    with rt:
        assert repr(rt) == ("<gpulanes.Runtime running device=cpu policy=deadline "
                            "partitioning=auto lanes=1 models=[a]>")
    assert repr(rt).startswith("<gpulanes.Runtime closed ")
