"""The TOML config of `gpulanes serve`: the example in the repo loads and serves, and every
mistake is refused with an error naming the key."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gpulanes as gl
from gpulanes.serve import load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "serve"

MODEL = {"file": "m.pt", "slo_ms": 10, "inputs": [{"name": "x", "datatype": "FP32", "shape": [4]}]}


def test_the_example_config_builds_a_runtime_that_serves_both_models(tmp_path):
    subprocess.run([sys.executable, str(EXAMPLE / "make_models.py"), str(tmp_path)], check=True,
                   capture_output=True)
    (tmp_path / "serve.toml").write_text((EXAMPLE / "serve.toml").read_text())
    cfg = load_config(tmp_path / "serve.toml")
    assert (cfg.host, cfg.http_port, cfg.grpc_port) == ("127.0.0.1", 8000, 8001)
    assert [m.name for m in cfg.models] == ["doubler", "classifier"]
    assert cfg.io()["classifier"].outputs == ["logits", "label"]
    cfg.runtime.update(device="cpu", profile_cache=False, profile_reps=3, warmup_rounds=1)
    rt = cfg.build_runtime()
    try:
        cfg.start_runtime(rt)
        assert torch.equal(rt.infer("doubler", torch.ones(4)), torch.full((4,), 2.0))
        logits, label = rt.infer("classifier", torch.zeros(16))
        assert logits.shape == (10,) and label.dtype == torch.int64
    finally:
        rt.shutdown()


@pytest.mark.parametrize("doc, says", [
    ({"models": {}}, "nothing to serve"),
    ({"modles": {"m": MODEL}}, "unknown key(s) ['modles']"),
    ({"server": {"http_port": 70000}, "models": {"m": MODEL}}, "server.http_port"),
    ({"server": {"http_port": "80"}, "models": {"m": MODEL}}, "server.http_port"),
    ({"server": {"http_port": -1, "grpc_port": -1}, "models": {"m": MODEL}}, "both -1"),
    ({"server": {"max_body_bytes": 0}, "models": {"m": MODEL}}, "server.max_body_bytes"),
    ({"server": {"drain_timeout_s": float("nan")}, "models": {"m": MODEL}}, "drain_timeout_s"),
    ({"server": {"token_env": "GPULANES_TEST_UNSET_VARIABLE"}, "models": {"m": MODEL}}, "not set"),
    ({"server": {"token": "a", "token_env": "B"}, "models": {"m": MODEL}}, "not both"),
    ({"server": {"log_level": "loud"}, "models": {"m": MODEL}}, "log level"),
    ({"runtime": {"devise": "cpu"}, "models": {"m": MODEL}}, "['devise']"),
    ({"runtime": {"lanes": "cpu"}, "models": {"m": MODEL}}, "runtime.lanes"),
    ({"models": {"m": {**MODEL, "slo_ms": -1}}}, "models.m.slo_ms"),
    ({"models": {"m": {**MODEL, "max_batch_size": -1}}}, "models.m.max_batch_size"),
    ({"models": {"m": {**MODEL, "file": ""}}}, "models.m.file"),
    ({"models": {"m": {**MODEL, "inputs": []}}}, "models.m.inputs must be a non-empty list"),
    ({"models": {"m": {**MODEL, "inputs": [{"name": "x", "datatype": "STRING", "shape": [1]}]}}},
     "models.m.inputs[0].datatype"),
    ({"models": {"m": {**MODEL, "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1]}]}}},
     "models.m.inputs[0].shape"),
    ({"models": {"m": {**MODEL, "inputs": [{"name": "x", "datatype": "BYTES", "shape": [4]}]}}},
     "models.m.inputs[0]: a BYTES tensor of a model with a batch dimension has shape [1]"),
    ({"models": {"m": {**MODEL, "inputs": [{"name": "x", "datatype": "BYTES", "shape": [-1]}]}}},
     "has shape [1] (TorchScript's List[str] holds one string per request), got [-1]"),
    ({"models": {"m": {**MODEL, "max_batch_size": 0,
                       "inputs": [{"name": "x", "datatype": "BYTES", "shape": [1]}]}}},
     "without a batch dimension has shape [-1]"),
    ({"models": {"m": {**MODEL, "outputs": [{"name": "y", "datatype": "BYTES", "shape": [2]}]}}},
     "models.m.outputs[0]: a BYTES tensor"),
    ({"models": {"m": {**MODEL, "outputs": ["y", "y"]}}}, "repeats a name"),
    ({"models": {"m": {**MODEL, "weights": 3}}}, "['weights']"),
    ({"models": {"m": {**MODEL, "load": "yes"}}}, "models.m.load"),
    ({"server": {"model_dir": "no/such/dir"}, "models": {"m": MODEL}}, "not a directory"),
    ({"models": {"a/b": MODEL}}, "model name 'a/b' is not a plain name"),
    ({"models": {"a b": MODEL}}, "model name 'a b' is not a plain name"),
    ({"models": {"a\nb": MODEL}}, "is not a plain name"),
    ({"models": {"..": MODEL}}, "is not a plain name"),
    ({"models": {"stats": MODEL}}, "taken by the statistics route"),
])
def test_mistakes_are_refused_naming_the_key(doc, says):
    with pytest.raises(gl.InvalidInput) as e:
        parse_config(doc)
    assert says in str(e.value)


def test_the_cli_reports_a_bad_config_and_exits_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nhost = 1")
    r = subprocess.run([sys.executable, "-m", "gpulanes", "serve", str(bad)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "not valid TOML" in r.stderr
    r = subprocess.run([sys.executable, "-m", "gpulanes", "serve", str(tmp_path / "none.toml")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "cannot read" in r.stderr
    r = subprocess.run([sys.executable, "-m", "gpulanes", "frobnicate"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "unknown command" in r.stderr


def test_a_corrupt_model_file_is_one_line_naming_its_config_entry(tmp_path):
    (tmp_path / "broken.pt").write_bytes(b"not a TorchScript archive")
    (tmp_path / "serve.toml").write_text(
        '[server]\nhttp_port = 0\ngrpc_port = -1\n[models.broken]\nfile = "broken.pt"\n'
        'slo_ms = 100\ninputs = [{ name = "x", datatype = "FP32", shape = [4] }]\n'
        'outputs = [{ name = "y", datatype = "FP32", shape = [4] }]\n')
    r = subprocess.run([sys.executable, "-m", "gpulanes", "serve", str(tmp_path / "serve.toml")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "[models.broken]: cannot load TorchScript model" in errors[0]
    assert "frame #" not in r.stderr and "Traceback" not in r.stderr, r.stderr
