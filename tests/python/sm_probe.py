"""A probe kernel that records the SM (%smid) each of its blocks ran on, launched on a given
CUDA stream: how the GPU tests check that a lane's kernels stay on the lane's own SMs. Compiled
with NVRTC to a cubin for the device's own architecture (sm_XY), not to PTX: PTX would be
compiled again by the driver's JIT, which refuses PTX from an NVRTC newer than the driver.
Launched through the driver API's context-independent libraries (cuLibrary*), so it can run on
a stream of any context, green ones included. Needs a GPU to run; compiles anywhere NVRTC is."""

from __future__ import annotations

import ctypes
import glob
import os
from typing import Set

import torch

SOURCE = rb"""
extern "C" __global__ void probe(unsigned int* out, long long spin) {
  unsigned int smid;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
  long long start = clock64();
  while (clock64() - start < spin) {}  // keep the SM busy so blocks spread over all allowed SMs
  if (threadIdx.x == 0) out[blockIdx.x] = smid;
}
"""


def _nvrtc() -> ctypes.CDLL:
    here = os.path.dirname(torch.__file__)
    candidates = glob.glob(os.path.join(here, "..", "nvidia", "*", "lib", "libnvrtc.so*"))
    candidates += ["libnvrtc.so"]
    for c in candidates:
        try:
            return ctypes.CDLL(c)
        except OSError:
            continue
    raise RuntimeError("libnvrtc not found")


def cubin(arch: str) -> bytes:
    """The probe compiled for `arch` (e.g. "sm_90"): an ELF cubin the driver loads as it is."""
    nvrtc = _nvrtc()
    prog = ctypes.c_void_p()
    assert nvrtc.nvrtcCreateProgram(ctypes.byref(prog), SOURCE, b"probe.cu", 0, None, None) == 0
    opts = (ctypes.c_char_p * 1)(f"--gpu-architecture={arch}".encode())
    if nvrtc.nvrtcCompileProgram(prog, 1, opts) != 0:
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(prog, log)
        raise RuntimeError(log.value.decode())
    size = ctypes.c_size_t()
    assert nvrtc.nvrtcGetCUBINSize(prog, ctypes.byref(size)) == 0
    image = ctypes.create_string_buffer(size.value)
    assert nvrtc.nvrtcGetCUBIN(prog, image) == 0
    nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
    return image.raw


def sm_ids(stream: int, device: int = 0, blocks: int = 2048, spin: int = 200_000) -> Set[int]:
    """The SMs `blocks` blocks of the probe ran on when launched on `stream`."""
    cuda = ctypes.CDLL("libcuda.so.1")
    major, minor = torch.cuda.get_device_capability(device)
    image = cubin(f"sm_{major}{minor}")
    lib, kernel = ctypes.c_void_p(), ctypes.c_void_p()
    rc = cuda.cuLibraryLoadData(ctypes.byref(lib), image, None, None, 0, None, None, 0)
    assert rc == 0, f"cuLibraryLoadData of the sm_{major}{minor} cubin returned {rc}"
    assert cuda.cuLibraryGetKernel(ctypes.byref(kernel), lib, b"probe") == 0
    out = torch.full((blocks,), -1, dtype=torch.int32, device=f"cuda:{device}")
    # The fill ran on torch's current stream; the probe on `stream` must start after it.
    filled = torch.cuda.Event()
    filled.record()
    torch.cuda.ExternalStream(stream, device=device).wait_event(filled)
    ptr = ctypes.c_void_p(out.data_ptr())
    spin_c = ctypes.c_longlong(spin)
    args = (ctypes.c_void_p * 2)(ctypes.cast(ctypes.byref(ptr), ctypes.c_void_p),
                                 ctypes.cast(ctypes.byref(spin_c), ctypes.c_void_p))
    assert cuda.cuLaunchKernel(kernel, blocks, 1, 1, 32, 1, 1, 0, ctypes.c_void_p(stream),
                               args, None) == 0
    torch.cuda.ExternalStream(stream, device=device).synchronize()
    cuda.cuLibraryUnload(lib)
    ids = out.cpu().tolist()
    assert -1 not in ids, "some probe blocks did not run"
    return set(ids)
