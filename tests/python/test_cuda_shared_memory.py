"""Triton's CUDA shared-memory extension at the server's side (gpulanes/serve/
cuda_shared_memory.py): IPC handles are checked before anything is opened, and on a GPU a
region copies inputs out of and outputs into another process's GPU memory. (Over HTTP and gRPC,
and what a server without a GPU answers: test_serve_shm.py.)"""

import base64
import subprocess
import sys

import pytest
import torch

from gpulanes.errors import InvalidInput
from gpulanes.serve.cuda_shared_memory import decode_handle


def test_cuda_ipc_handles_are_checked_before_anything_is_opened():
    with pytest.raises(InvalidInput, match="64-byte CUDA IPC handle"):
        decode_handle(base64.b64encode(b"short"), base64_encoded=True)
    with pytest.raises(InvalidInput, match="base64"):
        decode_handle("not base64!", base64_encoded=True)
    assert decode_handle(b"\1" * 64, base64_encoded=False) == b"\1" * 64


@pytest.mark.gpu
def test_cuda_shared_memory_regions_copy_from_and_into_another_processes_gpu_memory():
    # The client's side is this process (torch's IPC handles of two tensors); the server's is
    # a child, as a server is: CUDA opens no IPC handle in the process that made it.
    import json
    x = torch.arange(12, dtype=torch.float32, device="cuda")
    out = torch.zeros(12, dtype=torch.float32, device="cuda")
    torch.cuda.synchronize()

    def share(t):
        _, handle, _, offset, *_ = t.untyped_storage()._share_cuda_()
        return base64.b64encode(handle).decode(), offset
    (hx, ox), (ho, oo) = share(x), share(out)
    child = (
        "import json, sys, torch\n"
        "from gpulanes.serve.shared_memory import SystemSharedMemory\n"
        "from gpulanes.serve.cuda_shared_memory import decode_handle\n"
        "a = json.loads(sys.argv[1]); s = SystemSharedMemory()\n"
        "s.register_cuda('x', decode_handle(a['hx'], True), 0, a['ox'] + 48)\n"
        "s.register_cuda('o', decode_handle(a['ho'], True), 0, a['oo'] + 48)\n"
        "p = {'shared_memory_region': 'x', 'shared_memory_byte_size': 48,"
        " 'shared_memory_offset': a['ox']}\n"
        "t = torch.frombuffer(bytearray(s.read('input', p, 48)), dtype=torch.float32)\n"
        "q = {'shared_memory_region': 'o', 'shared_memory_byte_size': 48,"
        " 'shared_memory_offset': a['oo']}\n"
        "s.write('output', q, (t * 2 + 1).numpy().tobytes())\n"
        "print(json.dumps([r['name'] for r in s.status(cuda=True)]))\n"
        "s.unregister(cuda=True)\n"
        "print(json.dumps(t.tolist()))\n")
    r = subprocess.run([sys.executable, "-c", child,
                        json.dumps({"hx": hx, "ox": ox, "ho": ho, "oo": oo})],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    names, seen = (json.loads(line) for line in r.stdout.strip().splitlines()[-2:])
    assert sorted(names) == ["o", "x"]
    assert seen == x.cpu().tolist()
    torch.cuda.synchronize()
    assert torch.equal(out.cpu(), x.cpu() * 2 + 1)
