"""Model formats: TorchScript, AOTInductor packages (.pt2), torch.export programs and plain
nn.Modules are served alike. Compiling is the slow part: the models are tiny and every test of
a run shares the package cache (conftest gives the run its own GPULANES_CACHE_DIR), so each
model is compiled once per run."""

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.export import Dim

import gpulanes as gl
from conftest import Mlp

MAX_BATCH = 8
# Triton-style batching with a long delay: a burst of n requests runs as one batch of n, so
# every batch size from 1 to MAX_BATCH is served exactly as asked.
BURSTS = {"policy": "max_delay", "policy_options": {"max_queue_delay_microseconds": 100_000}}


class Mixed(nn.Module):
    """A float and an int64 input, a tuple of two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 6)
        self.lin = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor, ids: torch.Tensor):
        y = self.lin(x + self.emb(ids).mean(dim=1))
        return y, y.sum(dim=-1)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return Mlp().eval()


def _mixed() -> nn.Module:
    torch.manual_seed(1)
    return Mixed().eval()


def _serve_every_batch_size(rt: gl.Runtime, model: str, eager: nn.Module, make_sample,
                            tol: float = 1e-5) -> None:
    """Bursts of 1..MAX_BATCH requests; each output equals the eager module's on its sample."""
    for n in range(1, MAX_BATCH + 1):
        samples = [make_sample() for _ in range(n)]
        futures = [rt.submit(model, *s) for s in samples]
        for s, f in zip(samples, futures):
            got = f.result(timeout=60)
            with torch.no_grad():
                want = eager(*(t.unsqueeze(0) for t in s))
            if isinstance(want, tuple):
                assert isinstance(got, tuple) and len(got) == len(want)
                for g, w in zip(got, want):
                    torch.testing.assert_close(g, w[0], rtol=tol, atol=tol)
            else:
                torch.testing.assert_close(got, want[0], rtol=tol, atol=tol)
    assert rt.stats()[model]["batch_sizes"] == {n: 1 for n in range(1, MAX_BATCH + 1)}


@pytest.fixture(scope="module")
def mlp_package() -> Path:
    return gl.formats.compile_package(_mlp(), torch.zeros(1, 16), max_batch_size=MAX_BATCH,
                                      name="mlp", progress=False)


def test_every_format_of_one_model_serves_what_eager_computes(mlp_package, tmp_path):
    eager = _mlp()
    user_export = torch.export.export(  # what a user who exports it themselves holds
        eager, (torch.zeros(2, 16),),
        dynamic_shapes=({0: Dim("batch", min=1, max=MAX_BATCH)},))
    archive = io.BytesIO()
    torch.export.save(user_export, archive)
    models = {
        "torchscript": torch.jit.script(_mlp()),
        "module": _mlp(),
        "exported": user_export,
        "export_archive": archive.getvalue(),
        "package_path": mlp_package,
        "package_bytes": mlp_package.read_bytes(),
    }
    rt = gl.Runtime(device="cpu", **BURSTS)
    for name, model in models.items():
        rt.register(name, model, slo_ms=10_000, example_inputs=torch.zeros(1, 16),
                    max_batch_size=MAX_BATCH, progress=False)
    assert rt.formats() == {"torchscript": "torchscript", **{n: "aoti" for n in list(models)[1:]}}
    with rt:
        for name in models:
            _serve_every_batch_size(rt, name, eager, lambda: (torch.randn(16),))


def test_a_module_is_compiled_once_then_cached(mlp_package):
    again = gl.formats.compile_package(_mlp(), torch.zeros(1, 16), max_batch_size=MAX_BATCH,
                                       name="mlp", progress=False)
    assert again == mlp_package
    # Other weights, another max batch or another signature are other programs.
    other = _mlp()
    with torch.no_grad():
        other.net[0].bias.add_(1.0)
    for model, mb in ((other, MAX_BATCH), (_mlp(), MAX_BATCH * 2)):
        ep = gl.formats._export_batched(model, (torch.zeros(1, 16),), mb, "cpu", "mlp")
        key = gl.formats._package_key(ep, (torch.zeros(1, 16),), mb, "cpu")
        assert key[:24] not in mlp_package.name


def test_several_inputs_int64_and_tuple_outputs_with_a_static_batch_export():
    eager = _mixed()
    examples = (torch.zeros(1, 6), torch.zeros(1, 4, dtype=torch.int64))
    static = torch.export.export(eager, (torch.zeros(3, 6), torch.zeros(3, 4, dtype=torch.int64)))
    rt = gl.Runtime(device="cpu", **BURSTS)
    # Exported with a static batch of 3: exported again from its module with a dynamic one.
    rt.register("mixed", static, slo_ms=10_000, example_inputs=examples,
                max_batch_size=MAX_BATCH, progress=False)
    rt.register("mixed_ts", torch.jit.script(_mixed()), slo_ms=10_000, example_inputs=examples,
                max_batch_size=MAX_BATCH)
    with rt:
        for name in ("mixed", "mixed_ts"):
            _serve_every_batch_size(rt, name, eager, lambda: (
                torch.randn(6), torch.randint(0, 50, (4,), dtype=torch.int64)))
        y, s = rt.infer("mixed", torch.randn(6), torch.randint(0, 50, (4,)))
        assert y.shape == (3,) and s.shape == () and y.dtype == torch.float32


def _rewrite_metadata(package: Path, out: Path, **changes) -> Path:
    """A copy of `package` whose metadata says otherwise (as a package made elsewhere would)."""
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("_metadata.json"):
                meta = json.loads(data)
                meta.update(changes)
                data = json.dumps(meta).encode()
            dst.writestr(item, data)
    return out


def _register(model, **kwargs):
    rt = gl.Runtime(device="cpu")
    rt.register("m", model, slo_ms=1000, example_inputs=torch.zeros(1, 16),
                max_batch_size=MAX_BATCH, progress=False, **kwargs)
    return rt


def test_a_package_for_another_device_or_torch_is_a_model_error_naming_both(mlp_package, tmp_path):
    cuda = _rewrite_metadata(mlp_package, tmp_path / "cuda.pt2", AOTI_DEVICE_KEY="cuda")
    rt = _register(cuda)
    with pytest.raises(gl.ModelError, match=r"compiled for cuda and this lane runs on cpu"):
        rt.start(progress=False)
    old = _rewrite_metadata(mlp_package, tmp_path / "old.pt2", gpulanes_torch_version="2.4.0")
    with pytest.raises(gl.ModelError, match=rf"torch 2\.4\.0 and this is torch {torch.__version__.split('+')[0]}"):
        _register(old)
    assert gl.formats.package_metadata(cuda)["AOTI_DEVICE_KEY"] == "cuda"


def test_corrupt_or_truncated_packages_are_model_errors(mlp_package, tmp_path):
    data = mlp_package.read_bytes()
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.pt2"
    garbage.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    for path in (truncated, garbage, tmp_path / "missing.pt2"):
        with pytest.raises(gl.ModelError, match=r"cannot load"):
            _register(path)
    with pytest.raises(gl.ModelError):
        _register(data[: len(data) // 2])  # truncated bytes
    # The failed registrations left nothing behind: a good model registers under the same name.
    rt = _register(mlp_package)
    with rt:
        assert rt.infer("m", torch.zeros(16)).shape == (8,)


class DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # control flow on values: export cannot trace it
            return x + 1
        return x - 1


class FixedBatch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(2, -1).sum(dim=0).expand(x.shape[0], -1)  # assumes a batch of 2


@pytest.mark.parametrize("module,reason", [
    (DataDependent(), r"(?s)cannot export 'm'.*data.dependent"),
    (FixedBatch(), r"(?s)cannot export 'm' with a dynamic batch dimension.*batch"),
])
def test_a_module_that_cannot_be_exported_gets_a_model_error_with_exports_reason(module, reason):
    rt = gl.Runtime(device="cpu")
    with pytest.raises(gl.ModelError, match=reason):
        rt.register("m", module, slo_ms=1000, example_inputs=torch.zeros(1, 16),
                    max_batch_size=MAX_BATCH, progress=False)


def test_registering_a_module_neither_moves_nor_retrains_it():
    module = _mlp().train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    rt = gl.Runtime(device="cpu")
    rt.register("m", module, slo_ms=1000, example_inputs=torch.zeros(1, 16),
                max_batch_size=MAX_BATCH, progress=False)
    assert module.training
    for k, v in module.state_dict().items():
        assert v.device.type == "cpu" and torch.equal(v, before[k])


def test_what_is_no_model_is_a_type_error():
    rt = gl.Runtime(device="cpu")
    for bad in (42, None, [1, 2], object()):
        with pytest.raises(TypeError, match="model must be"):
            rt.register("m", bad, slo_ms=1000, example_inputs=torch.zeros(1, 16))


def test_a_package_is_served_over_kserve_from_a_config(mlp_package, tmp_path):
    starlette = pytest.importorskip("starlette")  # noqa: F841
    from starlette.testclient import TestClient

    from gpulanes.serve import app, load_config

    (tmp_path / "mlp.pt2").write_bytes(mlp_package.read_bytes())
    (tmp_path / "serve.toml").write_text(
        '[runtime]\ndevice = "cpu"\nprofile_cache = false\n'
        '[models.mlp]\nfile = "mlp.pt2"\nslo_ms = 10000\nmax_batch_size = 8\n'
        'inputs = [{ name = "x", datatype = "FP32", shape = [16] }]\n')
    cfg = load_config(tmp_path / "serve.toml")
    rt = cfg.build_runtime()
    try:
        cfg.start_runtime(rt)
        assert rt.formats() == {"mlp": "aoti"}
        x = torch.randn(3, 16)
        with TestClient(app(rt, io=cfg.io())) as c:
            r = c.post("/v2/models/mlp/infer", json={"inputs": [
                {"name": "x", "shape": [3, 16], "datatype": "FP32", "data": x.flatten().tolist()}]})
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        with torch.no_grad():
            want = _mlp()(x)
        torch.testing.assert_close(torch.tensor(out["data"]).reshape(out["shape"]), want,
                                   rtol=1e-5, atol=1e-5)
    finally:
        rt.shutdown()


def test_a_module_registered_while_serving_is_compiled_then_served(mlp_package):
    rt = gl.Runtime(device="cpu", warmup_rounds=1, profile_reps=3)
    rt.register("ts", torch.jit.script(_mlp()), slo_ms=10_000, example_inputs=torch.zeros(1, 16),
                max_batch_size=MAX_BATCH)
    with rt:
        rt.register("module", _mlp(), slo_ms=10_000, example_inputs=torch.zeros(1, 16),
                    max_batch_size=MAX_BATCH, progress=False)  # cached package: no compile
        x = torch.randn(16)
        torch.testing.assert_close(rt.infer("module", x), rt.infer("ts", x), rtol=1e-5, atol=1e-5)
        assert rt.formats()["module"] == "aoti"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not gl._C.cuda_lane_support(),
                    reason="needs a CUDA GPU and a CUDA build")
def test_a_module_is_compiled_for_and_served_on_the_gpu():
    eager = _mlp()
    rt = gl.Runtime(device="cuda", **BURSTS)
    rt.register("module", eager, slo_ms=10_000, example_inputs=torch.zeros(1, 16),
                max_batch_size=MAX_BATCH, progress=False)
    with rt:
        _serve_every_batch_size(rt, "module", eager, lambda: (torch.randn(16),), tol=1e-3)
    path = next(gl.formats.package_cache_dir().glob("module-*.pt2"))
    assert gl.formats.package_metadata(path)["AOTI_DEVICE_KEY"] == "cuda"


def test_a_compiled_modules_profile_is_cached_like_any_other(mlp_package):
    sources = []
    for _ in range(2):
        rt = gl.Runtime(device="cpu", warmup_rounds=1, profile_reps=3)
        rt.register("cached_mlp", _mlp(), slo_ms=1000, example_inputs=torch.zeros(1, 16),
                    max_batch_size=MAX_BATCH, progress=False)
        with rt:
            sources.append(rt.profile_source("cached_mlp"))
            assert [p["batch_size"] for p in rt.profile("cached_mlp")] == [1, 2, 4, 8]
    assert sources == ["measured", "cache"]
