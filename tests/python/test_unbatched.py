"""Models without a batch dimension (Triton's ``max_batch_size: 0``): a request is the model's
whole input and runs alone, in the Python API (TorchScript and nn.Module, thread and process
lanes) and over KServe v2 (HTTP, gRPC on both front ends, perf_analyzer), where metadata and
/config say so and a request shaped for a batched model is refused."""


import numpy as np
import pytest
import torch

import gpulanes as gl
from serve_helpers import RowSum, ServerProcess, perf_analyzer_run, write_config


@pytest.mark.parametrize("isolation", ["thread", "process"])
@pytest.mark.parametrize("form", ["torchscript", "module"])
def test_a_model_without_a_batch_dimension_takes_its_whole_input(isolation, form):
    model = torch.jit.script(RowSum()) if form == "torchscript" else RowSum()
    rt = gl.Runtime(device="cpu", warmup_rounds=1, profile_reps=3, profile_cache=False,
                    isolation=isolation)
    rt.register("rowsum", model, slo_ms=60_000, example_inputs=torch.zeros(3, 4),
                max_batch_size=0)
    with rt:
        x = torch.arange(12.0).reshape(3, 4)
        futures = [rt.submit("rowsum", x + i) for i in range(16)]
        for i, f in enumerate(futures):
            assert torch.equal(f.result(timeout=60), (x + i).sum(0) * 2)
        assert rt.max_batch_size("rowsum") == 0
        assert rt.input_signature("rowsum") == [((3, 4), torch.float32)]
        with pytest.raises(gl.InvalidInput, match="no batch dimension"):
            rt.submit("rowsum", torch.zeros(1, 3, 4))
        # every batch held one request, however many were queued together
        assert set(rt.stats()["rowsum"]["batch_sizes"]) == {1}


def test_examples_that_do_not_fit_are_refused_at_register():
    rt = gl.Runtime(device="cpu")
    with pytest.raises(gl.InvalidInput, match="do not fit"):
        rt.register("rowsum", torch.jit.script(RowSum()), slo_ms=1000,
                    example_inputs=torch.zeros(2, 3, 4), max_batch_size=0)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(write_config(tmp_path_factory.mktemp("unbatched"), ["rowsum"],
                                     max_batch_size=0))
    yield srv
    assert srv.terminate() == 0, "".join(srv.lines)


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_served_over_kserve_v2_with_the_whole_input(server, kind):
    lib = pytest.importorskip(f"tritonclient.{kind}")
    from tritonclient.utils import InferenceServerException
    c = lib.InferenceServerClient(server.http if kind == "http" else server.grpc)
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    inp = lib.InferInput("INPUT__0", [3, 4], "FP32")
    inp.set_data_from_numpy(x)
    np.testing.assert_array_equal(c.infer("rowsum", [inp]).as_numpy("OUTPUT__0"), x.sum(0) * 2)
    config = c.get_model_config("rowsum", **({} if kind == "http" else {"as_json": True}))
    config = config if kind == "http" else config["config"]
    assert int(config.get("max_batch_size", 0)) == 0
    assert [int(d) for d in config["input"][0]["dims"]] == [3, 4]
    meta = c.get_model_metadata("rowsum", **({} if kind == "http" else {"as_json": True}))
    assert [int(d) for d in meta["inputs"][0]["shape"]] == [3, 4]
    assert [int(d) for d in meta["outputs"][0]["shape"]] == [4]
    batched = lib.InferInput("INPUT__0", [1, 3, 4], "FP32")  # shaped for a batched model
    batched.set_data_from_numpy(x[None])
    with pytest.raises(InferenceServerException, match="no batch dimension"):
        c.infer("rowsum", [batched])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_drives_a_model_without_a_batch_dimension(server, protocol, tmp_path):
    rc, output, row = perf_analyzer_run("rowsum", server.http if protocol == "http" else
                                        server.grpc, protocol, tmp_path / "pa.csv")
    assert rc == 0, output
    assert float(row["Inferences/Second"]) > 0, row
