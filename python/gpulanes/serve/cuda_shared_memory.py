"""Triton's CUDA shared-memory extension: a client on the same host registers GPU memory it
allocated (a CUDA IPC handle, ``cudaIpcGetMemHandle``'s 64 bytes, base64 over HTTP) as a named
region, then names it for an input or a requested output as with system shared memory. The
server opens the handle (``cudaIpcOpenMemHandle``) once, copies inputs out of the region and
outputs into it with ``cudaMemcpy``, and closes it on unregister.

The CUDA runtime is the one torch loaded (libcudart), reached through ctypes: nothing more to
install, and the module imports where there is no GPU (registering then says why it cannot).
Bounds: MAX_REGIONS regions (shared with system shared memory's count), byte_size at most
MAX_BYTES, a device index that exists. The memory behind a handle belongs to the client: a
client that frees it while registered gets errors, not the server's memory.
"""

from __future__ import annotations

import base64
import ctypes
import glob
import os
import threading
from dataclasses import dataclass
from typing import Any, Dict

import torch

from ..errors import InvalidInput

MAX_BYTES = 1 << 34          # 16 GiB per region
_HOST_TO_DEVICE, _DEVICE_TO_HOST = 1, 2


class _Handle(ctypes.Structure):
    _fields_ = [("reserved", ctypes.c_char * 64)]  # cudaIpcMemHandle_t


_cudart = None


def _runtime():
    """libcudart as torch loaded it (its soname found among torch's and the system's)."""
    global _cudart
    if _cudart is not None:
        return _cudart
    if not torch.cuda.is_available():
        raise InvalidInput("CUDA shared memory needs a CUDA GPU, and this server has none")
    torch.cuda.init()
    candidates = ["libcudart.so", "libcudart.so.13", "libcudart.so.12"]
    base = os.path.dirname(torch.__file__)
    candidates += glob.glob(os.path.join(base, "lib", "libcudart*.so*"))
    candidates += glob.glob(os.path.join(os.path.dirname(base), "nvidia", "*", "lib",
                                         "libcudart.so*"))
    for name in candidates:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.cudaIpcOpenMemHandle.argtypes = [ctypes.POINTER(ctypes.c_void_p), _Handle,
                                             ctypes.c_uint]
        lib.cudaIpcCloseMemHandle.argtypes = [ctypes.c_void_p]
        lib.cudaMemcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                   ctypes.c_int]
        lib.cudaSetDevice.argtypes = [ctypes.c_int]
        lib.cudaGetErrorString.restype = ctypes.c_char_p
        _cudart = lib
        return lib
    raise InvalidInput("CUDA shared memory: the CUDA runtime library (libcudart) was not found")


def _check(rc: int, doing: str) -> None:
    if rc != 0:
        why = _runtime().cudaGetErrorString(rc).decode(errors="replace")
        raise InvalidInput(f"CUDA shared memory: {doing} failed: {why} (error {rc})")


@dataclass
class CudaRegion:
    name: str
    device_id: int
    byte_size: int
    pointer: int        # where the opened handle maps in this process
    lock: threading.Lock  # held while the region is read or written, and to close it
    closed: bool = False

    def status(self) -> Dict[str, Any]:
        return {"name": self.name, "device_id": self.device_id, "byte_size": self.byte_size}


def decode_handle(raw: Any, base64_encoded: bool) -> bytes:
    """The 64 bytes of a cudaIpcMemHandle_t, from base64 (HTTP) or as they are (gRPC)."""
    try:
        data = base64.b64decode(raw, validate=True) if base64_encoded else bytes(raw)
    except (ValueError, TypeError):
        raise InvalidInput("raw_handle must be a base64 CUDA IPC handle") from None
    if len(data) != ctypes.sizeof(_Handle):
        raise InvalidInput(f"raw_handle must be a {ctypes.sizeof(_Handle)}-byte CUDA IPC "
                           f"handle, got {len(data)} bytes")
    return data


def open_region(name: str, handle: bytes, device_id: Any, byte_size: Any) -> CudaRegion:
    if isinstance(device_id, bool) or not isinstance(device_id, int) or device_id < 0:
        raise InvalidInput(f"device_id must be a GPU index, got {device_id!r}")
    if isinstance(byte_size, bool) or not isinstance(byte_size, int) or \
            not 1 <= byte_size <= MAX_BYTES:
        raise InvalidInput(f"byte_size must be an integer in [1, {MAX_BYTES}], got {byte_size!r}")
    lib = _runtime()
    if device_id >= torch.cuda.device_count():
        raise InvalidInput(f"device_id {device_id}: this server has "
                           f"{torch.cuda.device_count()} GPU(s)")
    _check(lib.cudaSetDevice(device_id), f"selecting GPU {device_id}")
    pointer = ctypes.c_void_p()
    _check(lib.cudaIpcOpenMemHandle(ctypes.byref(pointer), _Handle(handle), 1),
           "opening the IPC handle")
    return CudaRegion(name, device_id, byte_size, pointer.value or 0, threading.Lock())


def close_region(region: CudaRegion) -> None:
    with region.lock:
        if region.closed:
            return
        region.closed = True
        _runtime().cudaIpcCloseMemHandle(ctypes.c_void_p(region.pointer))


def copy(region: CudaRegion, offset: int, host: torch.Tensor, into_region: bool, what: str) -> None:
    """Copies between the region (at ``offset``) and a contiguous CPU tensor."""
    with region.lock:
        if region.closed:
            raise InvalidInput(f"{what}: CUDA shared-memory region {region.name!r} was "
                               "unregistered while the request used it")
        # Synchronous copies on the host's side: the client finished writing an input before it
        # sent the request; an output is a CPU tensor the runtime already handed back.
        device = ctypes.c_void_p(region.pointer + offset)
        local = ctypes.c_void_p(host.data_ptr())
        n = host.numel() * host.element_size()
        if into_region:
            _check(_runtime().cudaMemcpy(device, local, n, _HOST_TO_DEVICE), f"{what}: copy")
        else:
            _check(_runtime().cudaMemcpy(local, device, n, _DEVICE_TO_HOST), f"{what}: copy")

