"""Done-callbacks run on the runtime's own threads: calling back into the runtime from one must
never deadlock, and a runtime must not hang a forked child. Each scenario runs in a subprocess
with a timeout, since the failure mode is a hang."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HERE = Path(__file__).parent

PRELUDE = """
import os, sys, threading, time
import torch
sys.path.insert(0, {here!r})
import gpulanes as gl
from conftest import Affine, Busy, scripted

def runtime(**kw):
    rt = gl.Runtime(device="cpu", warmup_rounds=1, profile_reps=3, profile_cache=False, **kw)
    rt.register("a", scripted(Affine()), slo_ms=60_000, example_inputs=torch.zeros(1, 4))
    rt.register("busy", scripted(Busy(300)), slo_ms=60_000, example_inputs=torch.zeros(1, 4),
                max_batch_size=1)
    return rt.start()

# Keeps the one lane busy for a while, so that a request submitted next is still pending when
# its callback is added: the callback then runs on the runtime's lane thread.
def occupy(rt):
    rt.submit("busy", x)

x = torch.ones(4)
"""


def run(body: str, timeout: float = 60) -> str:
    code = PRELUDE.format(here=str(HERE)) + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_shutdown_from_a_done_callback_returns_and_drains():
    out = run("""
        rt = runtime()
        seen = []
        occupy(rt)
        first = rt.submit("a", x)
        later = [rt.submit("a", x) for _ in range(50)]
        first.add_done_callback(lambda f: (rt.shutdown(), seen.append("shut")))
        for f in later:
            assert torch.equal(f.result(timeout=30), torch.full((4,), 3.0))
        deadline = time.monotonic() + 30
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == ["shut"]
        try:
            rt.submit("a", x)
            raise SystemExit("submit after shutdown was accepted")
        except gl.RuntimeClosed:
            pass
        rt.shutdown()  # the background shutdown and this one meet; both return
        print("ok")
    """)
    assert "ok" in out


def test_waiting_inside_a_done_callback_is_refused_not_a_deadlock():
    out = run("""
        rt = runtime()
        errors = []
        def callback(f):
            for call in (lambda: rt.infer("a", x), lambda: rt.submit("a", x).result(),
                         lambda: rt.set_lanes([{"device": "cpu"}])):
                assert threading.current_thread() is not threading.main_thread()
                try:
                    call()
                    errors.append(None)
                except gl.InvalidInput as e:
                    errors.append(str(e))
            chained = rt.submit("a", x)  # submitting alone is fine, and so is chaining
            chained.add_done_callback(lambda g: errors.append(g.result().sum().item()))
        occupy(rt)
        rt.submit("a", x).add_done_callback(callback)
        deadline = time.monotonic() + 30
        while len(errors) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(errors) == 4, errors
        assert all("done-callback" in e for e in errors[:3]), errors
        assert errors[3] == 12.0
        assert rt.stats()["a"]["in_flight"] == 0
        rt.shutdown()
        print("ok")
    """)
    assert "ok" in out


def test_the_last_reference_dying_in_a_done_callback_does_not_hang_exit():
    out = run("""
        holder = {"rt": runtime()}
        occupy(holder["rt"])
        fut = holder["rt"].submit("a", x)
        fut.add_done_callback(lambda f: holder.clear())  # the runtime's last reference
        del fut
        deadline = time.monotonic() + 30
        while holder and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not holder
        print("ok")
    """, timeout=60)
    assert "ok" in out


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_a_forked_child_is_refused_and_exits():
    out = run("""
        import warnings
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads running
        rt = runtime()
        assert torch.equal(rt.infer("a", x), torch.full((4,), 3.0))
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                rt.submit("a", x)
            except gl.RuntimeClosed as e:
                code = 0 if "forked child" in str(e) else 2
            try:
                rt.infer("a", x)
                code = 3
            except gl.RuntimeClosed:
                pass
            assert not rt.running
            sys.stdout.flush()
            os._exit(code) if code else sys.exit(0)  # a normal exit runs atexit: must not hang
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        assert torch.equal(rt.infer("a", x), torch.full((4,), 3.0))  # the parent still serves
        rt.shutdown()
        print("ok")
    """)
    assert "ok" in out
