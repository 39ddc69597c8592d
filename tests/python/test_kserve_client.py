"""KServe's own Python client (the `kserve` package: InferenceRESTClient and
InferenceGRPCClient) against `gpulanes serve`: health as JSON, readiness, metadata and inference
over REST (JSON and binary tensors) and gRPC, on both gRPC front ends. The client lives in a
virtual environment of its own (scripts/bootstrap.sh makes it), so it runs as a child process."""

import json
import subprocess
from pathlib import Path

import pytest

from gpulanes.serve.grpc_server import core_frontend_available
from serve_helpers import ServerProcess, write_config

KSERVE_PYTHON = Path.home() / ".cache" / "gpulanes" / "kserve-venv" / "bin" / "python"
CHECK = Path(__file__).with_name("kserve_client_check.py")
FRONTENDS = ["python"] + (["core"] if core_frontend_available() else [])


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_kserves_own_client_over_rest_and_grpc(tmp_path, frontend):
    assert KSERVE_PYTHON.exists(), f"{KSERVE_PYTHON} is missing: run scripts/bootstrap.sh"
    srv = ServerProcess(write_config(tmp_path, ["affine"], server=f'grpc_frontend = "{frontend}"'))
    try:
        r = subprocess.run([str(KSERVE_PYTHON), str(CHECK), srv.http, srv.grpc, "affine"],
                           capture_output=True, text=True, timeout=300)
    finally:
        assert srv.terminate() == 0, "".join(srv.lines)
    assert r.returncode == 0, r.stderr[-3000:]
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    for key in ("rest_live", "rest_ready", "rest_model_ready", "grpc_live", "grpc_ready",
                "grpc_model_ready"):
        assert seen[key] is True, (key, seen)
    want = [[2 * v + 1.0 for v in range(r0, r0 + 4)] for r0 in (0, 4)]
    for key in ("rest_infer_json", "rest_infer_binary", "grpc_infer"):
        assert seen[key]["id"] == "kserve-1", seen[key]
        assert seen[key]["output"] == want, seen[key]
    assert "no model named 'no-such-model'" in seen["rest_unknown"], seen["rest_unknown"]
    assert seen["grpc_metadata"] == {"name": "affine",
                                     "inputs": [["INPUT__0", "FP32", [-1, 4]]]}
    assert seen["grpc_server_metadata"]["name"] == "gpulanes"
    assert "system_shared_memory" in seen["grpc_server_metadata"]["extensions"]
