"""Profile files (schema, validation, round trip) and the profile cache of Runtime.start()."""

import json
import math

import pytest
import torch

import gpulanes as gl
from gpulanes import profiles
from conftest import Mlp, scripted


def mlp(seed: int):
    torch.manual_seed(seed)
    return scripted(Mlp())


def runtime(model, cache, **kw):
    rt = gl.Runtime(device="cpu", profile_cache=cache, profile_reps=3, warmup_rounds=1, **kw)
    rt.register("mlp", model, slo_ms=1_000, example_inputs=torch.zeros(1, 16), max_batch_size=4)
    return rt


def test_second_start_takes_the_profile_from_the_cache(tmp_path):
    with runtime(mlp(0), tmp_path) as rt:
        assert rt.profile_source("mlp") == "measured"
        first = rt.profile("mlp")
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1
    cached = profiles.load(files[0])["profiles"][0]
    assert cached["model"] == "mlp" and cached["lane_kind"] == "cpu"
    assert cached["device"] == profiles.device_name("cpu") and cached["torch"] == torch.__version__
    assert cached["inputs"] == [[[16], "float32"]] and cached["max_batch_size"] == 4
    assert [p["batch_size"] for p in cached["points"]] == [1, 2, 4]

    rt = runtime(mlp(0), tmp_path)
    assert rt.profile_source("mlp") is None
    with rt:
        assert rt.profile_source("mlp") == "cache"
        assert rt.profile("mlp") == first  # measured profiles never repeat to the nanosecond
        assert torch.allclose(rt.infer("mlp", torch.ones(16)), mlp(0)(torch.ones(1, 16))[0])


def test_cache_key_changes_with_the_model_and_its_signature(tmp_path):
    with runtime(mlp(0), tmp_path):
        pass
    with runtime(mlp(1), tmp_path) as rt:  # other weights: other bytes
        assert rt.profile_source("mlp") == "measured"
    assert len(list(tmp_path.glob("*.json"))) == 2
    rt = gl.Runtime(device="cpu", profile_cache=tmp_path, profile_reps=3, warmup_rounds=1)
    rt.register("mlp", mlp(0), slo_ms=1_000, example_inputs=torch.zeros(1, 16), max_batch_size=8)
    with rt:
        assert rt.profile_source("mlp") == "measured"  # other max batch size
    assert len(list(tmp_path.glob("*.json"))) == 3


def test_cache_off_and_corrupt_cache_files_mean_measuring(tmp_path):
    with runtime(mlp(0), False) as rt:
        assert rt.profile_source("mlp") == "measured"
    assert not list(tmp_path.iterdir())
    with runtime(mlp(0), tmp_path):
        pass
    (path,) = tmp_path.glob("*.json")
    good = path.read_text()
    path.write_text("{not json")
    with pytest.warns(UserWarning, match="broken profile cache file"):
        with runtime(mlp(0), tmp_path) as rt:
            assert rt.profile_source("mlp") == "measured"
    profiles.load(path)  # rewritten whole
    # Non-finite numbers parse as JSON (Python reads NaN and Infinity) but are never used.
    for bad in ("NaN", "Infinity", "-5.0"):
        doc = json.loads(good)
        doc["profiles"][0]["points"][0]["p50_us"] = float(bad)
        path.write_text(json.dumps(doc))
        with pytest.warns(UserWarning, match="p50_us"):
            with runtime(mlp(0), tmp_path) as rt:
                assert rt.profile_source("mlp") == "measured"
                assert all(math.isfinite(p["p50_us"]) for p in rt.profile("mlp"))


def test_save_and_load_profiles_round_trip(tmp_path):
    with runtime(mlp(0), False) as rt:
        rt.save_profiles(tmp_path / "p.json")
        measured = rt.profile("mlp")
    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["schema"] == "gpulanes.profiles" and doc["version"] == profiles.VERSION
    rt = runtime(mlp(0), False)
    assert rt.load_profiles(tmp_path / "p.json") == ["mlp"]
    with rt:
        assert rt.profile_source("mlp") == "given"
        assert rt.profile("mlp") == measured
    other = runtime(mlp(1), False)
    with pytest.raises(profiles.ProfileError, match="different model"):
        other.load_profiles(tmp_path / "p.json")
    other.shutdown()


def entry(**overrides):
    e = profiles.make_entry("m", [{"batch_size": 1, "p50_us": 100.0},
                                  {"batch_size": 4, "p50_us": 250.0}],
                            model_hash=None, device="dev", lane_kind="sim", max_batch_size=4)
    e.update(overrides)
    return e


@pytest.mark.parametrize("bad, message", [
    ({"schema": "other", "version": 1, "profiles": []}, "schema"),
    ({"schema": "gpulanes.profiles", "version": 99, "profiles": []}, "newer"),
    ({"schema": "gpulanes.profiles", "version": 1, "profiles": [
        entry(points=[{"batch_size": 2, "p50_us": 1.0}, {"batch_size": 1, "p50_us": 2.0}])]},
     "increase"),
    ({"schema": "gpulanes.profiles", "version": 1, "profiles": [
        entry(points=[{"batch_size": 1}])]}, "p50_us"),
    ({"schema": "gpulanes.profiles", "version": 1, "profiles": [entry(sm_share=1.5)]},
     "sm_share"),
    ({"schema": "gpulanes.profiles", "version": 1, "profiles": [entry(model=None)]}, "model"),
])
def test_schema_violations_are_refused_with_the_reason(tmp_path, bad, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(profiles.ProfileError, match=message):
        profiles.load(path)
    with pytest.raises(ValueError):  # a ProfileError is an InvalidInput
        profiles.validate(bad)


def test_entries_with_an_sm_share_are_found_by_share(tmp_path):
    doc = profiles.save(tmp_path / "zoo.json",
                        [entry(sm_share=0.5, intensity={"l2": 0.3, "dram": 0.1}), entry()],
                        source="synthetic", note="test")
    assert profiles.find(doc, "m", sm_share=0.5)[0]["intensity"] == {"l2": 0.3, "dram": 0.1}
    assert len(profiles.find(profiles.load(tmp_path / "zoo.json"), "m")) == 2
    assert profiles.find(doc, "other") == []


class _PartitionCore:
    """Stands in for the core of a runtime whose model ran only on 16-SM green lanes of a
    132-SM GPU: what it measured there, and where."""

    def __init__(self, points):
        self.points = points

    def profile(self, model, lane):
        return self.points

    def profile_origin(self, model):
        return {"lane_kind": "cuda-green", "sms": 16, "sm_share": 16 / 132}

    def partition_profiles(self):
        return [{"model": "mlp", "sms": 16, "points": self.points}]


def test_a_profile_measured_on_a_partition_lane_is_cached_at_its_share(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: type("P", (), {"multi_processor_count": 132})())
    rt = runtime(mlp(0), tmp_path)
    points = [{"batch_size": 1, "p50_us": 900.0}, {"batch_size": 4, "p50_us": 2000.0}]
    core, rt._core = rt._core, _PartitionCore(points)
    try:
        rt._cache_profiles({"device": "NVIDIA H200", "lane_kind": "cuda-stream"}, ["mlp"])
    finally:
        rt._core = core
    entries = [profiles.load(f)["profiles"][0] for f in tmp_path.glob("*.json")]
    assert len(entries) == 1  # the model's own profile and the 16-SM lane's are one entry
    assert entries[0]["lane_kind"] == "cuda-green" and entries[0]["sms"] == 16
    assert entries[0]["sm_share"] == pytest.approx(16 / 132)
    # A whole-GPU lookup misses it; a lookup at that share finds it.
    whole = rt._profile_entry("mlp", {"device": "NVIDIA H200", "lane_kind": "cuda-stream"}, [])
    assert rt._cache.get(whole) is None
    part = rt._partition_entry("mlp", {"device": "NVIDIA H200", "lane_kind": "cuda-stream"}, 16, [])
    assert rt._cache.get(part)["points"][1]["p50_us"] == 2000.0


def test_a_profile_measured_on_an_mps_lane_is_cached_as_one(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: type("P", (), {"multi_processor_count": 132})())
    rt = runtime(mlp(0), tmp_path, partitioning="mps")
    core, rt._core = rt._core, _PartitionCore([{"batch_size": 1, "p50_us": 900.0}])
    try:
        rt._cache_profiles({"device": "NVIDIA H200", "lane_kind": "cuda-stream"}, ["mlp"])
    finally:
        rt._core = core
    entries = [profiles.load(f)["profiles"][0] for f in tmp_path.glob("*.json")]
    assert [(e["lane_kind"], e["sms"]) for e in entries] == [("cuda-mps", 16)]
