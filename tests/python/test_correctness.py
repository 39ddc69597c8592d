"""Outputs served by the runtime equal a direct call of the same module on the same inputs."""

import pytest
import torch

import gpulanes as gl
from conftest import Affine, ListOut, Mlp, TokenClassifier, TwoInputsTupleOut, scripted


def _direct(module, *sample):
    """The module called directly on a batch of one, batch dimension removed again."""
    with torch.inference_mode():
        out = module(*(s.unsqueeze(0) for s in sample))
    if isinstance(out, (tuple, list)):
        return type(out)(o[0] for o in out)
    return out[0]


@pytest.fixture(scope="module")
def zoo():
    torch.manual_seed(0)
    mods = {
        "mlp": (scripted(Mlp()), (torch.randn(1, 16),)),
        "tokens": (scripted(TokenClassifier()), (torch.randint(0, 100, (1, 7)),)),
        "two": (scripted(TwoInputsTupleOut()), (torch.randn(1, 4, 6), torch.ones(1, 4, dtype=torch.int64))),
        "list": (scripted(ListOut()), (torch.randn(1, 3),)),
    }
    rt = gl.Runtime(device="cpu")
    for name, (mod, example) in mods.items():
        rt.register(name, mod, slo_ms=10_000, example_inputs=example, max_batch_size=8)
    with rt:
        yield rt, mods


def _sample(name, gen):
    if name == "mlp":
        return (torch.randn(16, generator=gen),)
    if name == "tokens":
        return (torch.randint(0, 100, (7,), generator=gen),)
    if name == "two":
        return (torch.randn(4, 6, generator=gen), torch.randint(0, 2, (4,), generator=gen))
    return (torch.randn(3, generator=gen),)


@pytest.mark.parametrize("name", ["mlp", "tokens", "two", "list"])
def test_outputs_equal_direct_call(zoo, name):
    rt, mods = zoo
    module = mods[name][0]
    gen = torch.Generator().manual_seed(1)
    samples = [_sample(name, gen) for _ in range(200)]
    futures = [rt.submit(name, *s) for s in samples]  # submitted together, so they batch
    for s, f in zip(samples, futures):
        got, want = f.result(timeout=60), _direct(module, *s)
        if isinstance(want, torch.Tensor):
            torch.testing.assert_close(got, want)
        else:
            assert type(got) is type(want) and len(got) == len(want)
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w)
    assert rt.stats()[name]["mean_batch_size"] > 1  # the comparison covered real batches


def test_int64_and_multiple_inputs_keep_dtypes(zoo):
    rt, _ = zoo
    y, s = rt.infer("two", torch.randn(4, 6), torch.tensor([1, 0, 1, 1]))
    assert y.shape == (4, 3) and s.shape == (4,)
    assert y.dtype == torch.float32
    assert torch.all(y[1] == 0)  # the int64 mask reached the model as given


def test_path_bytes_and_module_sources_agree(tmp_path):
    mod = scripted(Mlp())
    path = tmp_path / "mlp.pt"
    torch.jit.save(mod, str(path))
    rt = gl.Runtime(device="cpu")
    ex = (torch.randn(1, 16),)
    rt.register("from_module", mod, slo_ms=1000, example_inputs=ex)
    rt.register("from_path", path, slo_ms=1000, example_inputs=ex)
    rt.register("from_str", str(path), slo_ms=1000, example_inputs=ex)
    rt.register("from_bytes", path.read_bytes(), slo_ms=1000, example_inputs=ex)
    x = torch.randn(16)
    with rt:
        outs = [rt.infer(n, x) for n in ("from_module", "from_path", "from_str", "from_bytes")]
    for o in outs:
        torch.testing.assert_close(o, _direct(mod, x))


def test_registered_copy_is_independent_of_later_changes():
    mod = scripted(Affine())
    rt = gl.Runtime(device="cpu")
    rt.register("affine", mod, slo_ms=1000, example_inputs=torch.zeros(1, 2))
    with rt:
        assert torch.equal(rt.infer("affine", torch.ones(2)), torch.full((2,), 3.0))
