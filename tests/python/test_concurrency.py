"""Many submitters, asyncio, and the GIL."""

import asyncio
import threading
import time

import pytest
import torch

import gpulanes as gl
from conftest import Affine, Busy, busy_runtime, scripted


def test_threads_all_resolve_exactly_once_with_right_result(affine_rt, unraisable):
    n_threads, per_thread = 8, 2000
    results = {}
    done_calls = {}
    lock = threading.Lock()
    errors = []

    def worker(t):
        futs = []
        for i in range(per_thread):
            key = t * per_thread + i
            f = affine_rt.submit("affine", torch.full((4,), float(key)))

            def on_done(_f, key=key):
                with lock:
                    done_calls[key] = done_calls.get(key, 0) + 1
            f.add_done_callback(on_done)
            futs.append((key, f))
        for key, f in futs:
            try:
                results[key] = f.result(timeout=120)
            except Exception as e:  # pragma: no cover - reported below
                errors.append((key, e))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    total = n_threads * per_thread
    assert len(results) == total
    for key, y in results.items():
        assert torch.equal(y, torch.full((4,), 2.0 * key + 1.0)), key
    time.sleep(0.05)  # done-callbacks of the last futures run right after result() returns
    assert len(done_calls) == total and set(done_calls.values()) == {1}
    assert not unraisable  # no future was resolved twice
    s = affine_rt.stats()["affine"]
    assert s["submitted"] == total and s["met"] == total and s["in_flight"] == 0


def test_asyncio_thousand_concurrent_without_a_thread_each(affine_rt):
    threads_before = threading.active_count()
    peak = [threads_before]

    async def one(i):
        y = await affine_rt.infer_async("affine", torch.full((4,), float(i)))
        peak[0] = max(peak[0], threading.active_count())
        return i, y

    async def main():
        return await asyncio.gather(*(one(i) for i in range(1000)))

    out = asyncio.run(main())
    assert len(out) == 1000
    for i, y in out:
        assert torch.equal(y, torch.full((4,), 2.0 * i + 1.0))
    assert peak[0] <= threads_before + 2  # no thread per request


def test_asyncio_errors_are_raised_on_await(affine_rt):
    async def main():
        try:
            await affine_rt.infer_async("affine", torch.zeros(3))
        except gl.InvalidInput:
            return "invalid"
    assert asyncio.run(main()) == "invalid"


@pytest.mark.parametrize("path", ["future", "infer"])
def test_other_python_threads_run_while_one_waits_on_result(path):
    rt = busy_runtime(iters=600)
    try:
        wait = (lambda: rt.submit("busy", torch.zeros(4)).result(timeout=60)) if path == "future" \
            else (lambda: rt.infer("busy", torch.zeros(4), timeout=60))
        ticks = [0]
        stop = threading.Event()

        def spin():
            while not stop.is_set():
                ticks[0] += 1

        t = threading.Thread(target=spin)
        t.start()
        start = time.perf_counter()
        assert torch.equal(wait(), torch.ones(4))
        waited = time.perf_counter() - start
        stop.set()
        t.join()
        assert waited > 0.005  # the request really kept this thread waiting
        assert ticks[0] > 1000  # ...while the other thread kept running Python code
    finally:
        rt.shutdown()


def test_stats_counts_add_up_under_concurrency(affine_rt):
    futs = [affine_rt.submit("affine", torch.zeros(4)) for _ in range(300)]
    for bad in range(20):
        try:
            affine_rt.submit("affine", torch.zeros(5))
        except gl.InvalidInput:
            pass
    for f in futs:
        f.result(timeout=60)
    s = affine_rt.stats()["affine"]
    assert s["rejected"] == 20
    assert s["submitted"] == s["met"] + s["missed"] + s["dropped"] + s["rejected"] + s["failed"] + s["in_flight"]
    assert s["latency_ms"]["count"] == s["completed"] == 300
    assert sum(k * v for k, v in s["batch_sizes"].items()) == 300
    assert 0 < s["latency_ms"]["p50"] <= s["latency_ms"]["p99"] <= s["latency_ms"]["max"]


def test_infer_timeout_leaves_request_in_flight():
    rt = busy_runtime(iters=600)
    try:
        with pytest.raises(TimeoutError):
            rt.infer("busy", torch.zeros(4), timeout=0.001)
        assert torch.equal(rt.infer("busy", torch.zeros(4)), torch.ones(4))
        s = rt.stats()["busy"]
        assert s["met"] == 2  # the timed-out request still ran and was counted
    finally:
        rt.shutdown()


def test_metrics_text_is_valid_prometheus_and_matches_stats(affine_rt):
    import re

    futs = [affine_rt.submit("affine", torch.zeros(4)) for _ in range(120)]
    for f in futs:
        f.result(timeout=60)
    with pytest.raises(gl.InvalidInput):
        affine_rt.submit("affine", torch.zeros(3))
    text = affine_rt.metrics_text()
    stats = affine_rt.stats()["affine"]
    sample = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)\{((?:[a-zA-Z_]+="(?:[^"\\]|\\.)*",?)*)\} (\S+)$')
    values, typed = {}, set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
            continue
        if line.startswith("# HELP "):
            continue
        m = sample.match(line)
        assert m, f"not exposition format: {line!r}"
        labels = dict(re.findall(r'([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"', m.group(2)))
        values[(m.group(1), tuple(sorted(labels.items())))] = float(m.group(3))
        assert any(m.group(1) == t or m.group(1).startswith(t + "_") for t in typed), line

    def v(name, **labels):
        return values[(name, tuple(sorted({"model": "affine", **labels}.items())))]

    for outcome in ("met", "missed", "dropped", "rejected", "failed"):
        assert v("gpulanes_requests_total", outcome=outcome) == stats[outcome]
    assert v("gpulanes_requests_submitted_total") == stats["submitted"] == 121
    assert v("gpulanes_request_latency_seconds_count") == stats["completed"] == 120
    assert abs(v("gpulanes_request_latency_seconds", quantile="0.99") * 1e3
               - stats["latency_ms"]["p99"]) < 1e-6
    buckets = sorted((float(k[1][0][1]) if k[1][0][1] != "+Inf" else float("inf"), val)
                     for k, val in values.items() if k[0] == "gpulanes_batch_size_bucket")
    counts = [c for _, c in buckets]
    assert counts == sorted(counts) and counts[-1] == v("gpulanes_batch_size_count") == stats["batches"]
    assert v("gpulanes_batch_size_sum") == 120
    assert v("gpulanes_batch_latency_prediction_mape") == pytest.approx(
        stats["prediction_error"]["mape"])
    lane = affine_rt.stats(per="lane")[0]
    lane_labels = (("device", "cpu"), ("kind", "cpu"), ("lane", "0"))
    assert values[("gpulanes_lane_batches_total", lane_labels)] == lane["batches"] == stats["batches"]
    assert values[("gpulanes_lane_requests_total", lane_labels + (("outcome", "met"),))] == 120
    assert 0 < values[("gpulanes_lane_busy_fraction", lane_labels)] <= 1


def test_trace_frame_records_every_request():
    # Queue admission off: the request due too soon must queue and be dropped, not be refused.
    rt = gl.Runtime(device="cpu", trace=True, profile_reps=3, warmup_rounds=1,
                    policy_options={"queue_admission": False})
    rt.register("a", scripted(Affine()), slo_ms=5_000, example_inputs=torch.zeros(1, 4))
    rt.register("busy", scripted(Busy(300)), slo_ms=60_000, example_inputs=torch.zeros(1, 4),
                max_batch_size=1)
    with rt:
        alone_ms = rt.profile("busy")[0]["p50_us"] / 1e3
        ok = [rt.submit("a", torch.zeros(4)) for _ in range(50)]
        for f in ok:
            f.result(timeout=60)
        first = [rt.submit("busy", torch.zeros(4)) for _ in range(2)]
        time.sleep(0.005)  # the first is running: whatever comes now waits most of `alone`
        late = rt.submit("busy", torch.zeros(4), deadline_ms=1.2 * alone_ms)  # dropped later
        with pytest.raises(gl.InvalidInput):
            rt.submit("a", torch.zeros(5))  # rejected
        for f in ok + first:
            f.result(timeout=60)
        assert isinstance(late.exception(timeout=60), gl.DeadlineExceeded)
    df = rt.trace_frame()
    assert len(df) == 54
    assert (df.groupby("outcome").size().to_dict()
            == {"met": 52, "dropped": 1, "rejected": 1})
    ran = df[df["outcome"] == "met"]
    assert (ran["arrival_s"] <= ran["start_s"]).all() and (ran["start_s"] <= ran["end_s"]).all()
    assert (ran["end_s"] <= ran["deadline_s"]).all()
    assert ran["request_id"].is_unique and (ran["batch_id"] > 0).all()
    assert ran.groupby("batch_id")["batch_size"].first().sum() == 52
    dropped = df[df["outcome"] == "dropped"].iloc[0]
    assert dropped["batch_id"] == -1 and dropped["model"] == "busy"
    s = rt.stats()
    assert sum(v["submitted"] for v in s.values()) == len(df)
    # Per lane: what ran there, agreeing with the trace.
    lanes = rt.stats(per="lane")
    assert list(lanes) == [0]
    lane = lanes[0]
    assert lane["met"] == 52 and lane["requests"] == 52 and lane["missed"] == lane["failed"] == 0
    assert lane["batches"] == ran["batch_id"].nunique() == sum(lane["batches_by_model"].values())
    assert lane["batches_by_model"]["busy"] == 2
    assert 0 < lane["busy_s"] <= lane["elapsed_s"] and lane["busy_fraction"] <= 1
    # The busy model's batches took about 1-2 of its profiled latencies each.
    assert lane["busy_s"] >= 2 * 0.5 * alone_ms / 1e3
    err = s["busy"]["prediction_error"]
    assert err["batches"] == 2 and err["mape"] >= 0 and err["p99_abs_ms"] >= 0
    with pytest.raises(ValueError, match="per"):
        rt.stats(per="gpu")


def test_refusals_make_no_future_and_every_accepted_one_resolves_once(unraisable):
    # Futures are made only for accepted requests (a refusal must stay cheap under overload),
    # including those the submitting thread's own round already failed before submit returned.
    rt = gl.Runtime(device="cpu", warmup_rounds=1, profile_reps=3, profile_cache=False,
                    policy_options={"queue_admission": False})
    rt.register("busy", scripted(Busy(40)), slo_ms=60_000, example_inputs=torch.zeros(2, 3),
                max_batch_size=2, max_queue=4)
    made = []
    new_future = rt._new_future
    rt._new_future = lambda: made.append(new_future()) or made[-1]
    accepted, refused = [], 0
    with rt.start():
        busy_ms = rt.profile("busy")[0]["p50_us"] / 1e3
        for i in range(400):
            try:  # deadlines from "just makes a batch of one" to "waits behind a few"
                accepted.append(rt.submit("busy", torch.zeros(3),
                                          deadline_ms=busy_ms * (1.05 + (i % 7) * 0.5)))
            except (gl.QueueFull, gl.DeadlineExceeded):  # Overloaded is a QueueFull
                refused += 1
        outcomes = {}
        for f in accepted:
            e = f.exception(timeout=120)
            outcomes[type(e).__name__] = outcomes.get(type(e).__name__, 0) + 1
    assert refused > 0 and accepted
    assert made == accepted  # one future per accepted request, none for a refused one
    assert set(outcomes) <= {"NoneType", "DeadlineExceeded"}, outcomes
    assert not unraisable
    s = rt.stats()["busy"]
    assert s["submitted"] == len(accepted) + refused and s["rejected"] == refused
    assert s["in_flight"] == 0
