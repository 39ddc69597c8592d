"""Triton's system shared-memory extension: a client on the same host registers a POSIX
shared-memory object (``/dev/shm/<key>``) as a named region, then names the region, an offset
and a byte count in an input's or a requested output's ``parameters``
(``shared_memory_region``, ``shared_memory_offset``, ``shared_memory_byte_size``) instead of
sending the tensor's bytes. The server reads such an input from the region and writes such an
output into it; the reply then names the region and the output's byte count and carries no data.

Bounds (a client may name what it likes): at most MAX_REGIONS regions; a key is one name under
/dev/shm (no other path; symbolic links refused) of a regular file that already exists; the
region must lie within the file; a region name is at most 128 printable characters without "/".
An input's bytes are copied out of the region when the request is decoded (the runtime keeps
its own copy), so a client changing the region afterwards changes nothing. A region
unregistered while a request that names it is in flight is refused when the request reaches it
(its output cannot be written: the request fails with 400), and its mapping is released once no
request holds it.
"""

from __future__ import annotations

import mmap
import os
import re
import stat
import threading
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..errors import InvalidInput

MAX_REGIONS = 256
SHM_DIR = "/dev/shm"
_KEY = re.compile(r"/[A-Za-z0-9._-]{1,250}")
_NAME = re.compile(r"[^\x00-\x1f\x7f/]{1,128}")
PARAMS = ("shared_memory_region", "shared_memory_offset", "shared_memory_byte_size")


@dataclass
class Region:
    name: str
    key: str
    offset: int      # where the region starts in the object
    byte_size: int
    view: mmap.mmap  # the object mapped from 0 to offset + byte_size

    def status(self) -> Dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset,
                "byte_size": self.byte_size}


def _count(what: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInput(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def uses_shared_memory(params: Optional[Mapping[str, Any]]) -> bool:
    """Whether a tensor's parameters name a shared-memory region."""
    return bool(params) and any(p in params for p in PARAMS)


class SystemSharedMemory:
    """The registered regions of one server, system (POSIX) and CUDA ones in one namespace (a
    request names a region, whichever kind it is; cuda_shared_memory.py has the CUDA side).
    Thread-safe: registration comes from the event loop, reads and writes from request
    handlers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._regions: Dict[str, Region] = {}
        self._cuda: Dict[str, Any] = {}  # name -> cuda_shared_memory.CudaRegion

    def _check_new(self, name: Any) -> None:
        """Refuses a bad or taken name, or one region too many; caller holds _lock."""
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise InvalidInput("a shared-memory region's name must be 1 to 128 printable "
                               "characters without '/'")
        if name in self._regions or name in self._cuda:
            raise InvalidInput(f"shared-memory region {name!r} is already registered")
        if len(self._regions) + len(self._cuda) >= MAX_REGIONS:
            raise InvalidInput(f"at most {MAX_REGIONS} shared-memory regions may be "
                               "registered at once")

    def register(self, name: Any, key: Any, offset: Any, byte_size: Any) -> None:
        if not isinstance(key, str) or not _KEY.fullmatch(key) or key in ("/.", "/.."):
            raise InvalidInput(f"shared-memory key {key[:64]!r} must be '/' and a name of "
                               "letters, digits, '.', '_' or '-' (an object in /dev/shm)"
                               if isinstance(key, str) else "shared-memory key must be a string")
        offset = _count("offset", offset)
        byte_size = _count("byte_size", byte_size, 1)
        with self._lock:
            self._check_new(name)
            path = os.path.join(SHM_DIR, key[1:])
            try:
                fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as e:
                raise InvalidInput(f"shared-memory key {key!r} cannot be opened: "
                                   f"{e.strerror or e}") from None
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise InvalidInput(f"shared-memory key {key!r} is not a shared-memory object")
                if offset + byte_size > st.st_size:
                    raise InvalidInput(f"shared-memory region {name!r} (offset {offset}, "
                                       f"{byte_size} bytes) runs past the {st.st_size} bytes "
                                       f"of {key!r}")
                view = mmap.mmap(fd, offset + byte_size)
            finally:
                os.close(fd)
            self._regions[name] = Region(name, key, offset, byte_size, view)

    def register_cuda(self, name: Any, handle: bytes, device_id: Any, byte_size: Any) -> None:
        from . import cuda_shared_memory as cuda

        with self._lock:
            self._check_new(name)
            self._cuda[name] = cuda.open_region(name, handle, device_id, byte_size)

    def unregister(self, name: Any = None, cuda: bool = False) -> None:
        """Forgets system (or, with ``cuda``, CUDA) region ``name``, or every one of the kind
        when it is empty. Unknown names are not an error (as Triton)."""
        table = self._cuda if cuda else self._regions
        with self._lock:
            gone = list(table.values()) if not name else [table[name]] if name in table else []
            for r in gone:
                del table[r.name]
        for r in gone:
            if cuda:
                from . import cuda_shared_memory
                cuda_shared_memory.close_region(r)
                continue
            try:
                r.view.close()
            except BufferError:  # a request still reads it: freed with its last reference
                pass

    def status(self, name: Any = None, cuda: bool = False) -> List[Dict[str, Any]]:
        table = self._cuda if cuda else self._regions
        with self._lock:
            if not name:
                return [r.status() for r in table.values()]
            if name not in table:
                raise InvalidInput(f"no {'CUDA ' if cuda else ''}shared-memory region named "
                                   f"{str(name)[:128]!r}")
            return [table[name].status()]

    def _span(self, what: str, params: Mapping[str, Any]) -> Tuple[Any, int, int]:
        """(region, start in it, byte count) that ``params`` name; the start is in the
        region's mapping for a system region, from the region's start for a CUDA one."""
        name = params.get("shared_memory_region")
        if not isinstance(name, str):
            raise InvalidInput(f"{what}: shared_memory_region must name a region")
        size = _count(f"{what}: shared_memory_byte_size", params.get("shared_memory_byte_size"), 1)
        offset = _count(f"{what}: shared_memory_offset", params.get("shared_memory_offset", 0))
        with self._lock:
            region = self._regions.get(name) or self._cuda.get(name)
        if region is None:
            raise InvalidInput(f"{what}: no shared-memory region named {name[:128]!r} is "
                               "registered")
        if offset + size > region.byte_size:
            raise InvalidInput(f"{what}: offset {offset} and {size} bytes run past the "
                               f"{region.byte_size} bytes of region {name!r}")
        start = region.offset + offset if isinstance(region, Region) else offset
        return region, start, size

    def read(self, what: str, params: Mapping[str, Any], expected: Optional[int]):
        """The bytes of an input that ``params`` place in a region (a copy, writable); its size
        is checked against the ``expected`` bytes before anything is copied (None: BYTES data,
        whose size only its strings say, checked as they are decoded; the region bounds it)."""
        region, start, size = self._span(what, params)
        if expected is not None and size != expected:
            raise InvalidInput(f"{what}: shared_memory_byte_size is {size}; its shape and "
                               f"datatype take {expected} bytes")
        if not isinstance(region, Region):
            import torch

            from . import cuda_shared_memory
            host = torch.empty(size, dtype=torch.uint8)
            cuda_shared_memory.copy(region, start, host, into_region=False, what=what)
            return memoryview(host.numpy())
        try:
            return bytearray(region.view[start:start + size])
        except ValueError:  # unregistered (closed) meanwhile
            raise InvalidInput(f"{what}: shared-memory region {region.name!r} was unregistered "
                               "while the request was decoded") from None

    def write(self, what: str, params: Mapping[str, Any], data: bytes) -> int:
        """Writes an output into the region ``params`` name; returns its byte count."""
        region, start, size = self._span(what, params)
        if len(data) > size:
            raise InvalidInput(f"{what}: {len(data)} bytes do not fit the "
                               f"shared_memory_byte_size of {size}")
        if not isinstance(region, Region):
            import torch

            from . import cuda_shared_memory
            if not data:
                return 0
            host = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            cuda_shared_memory.copy(region, start, host, into_region=True, what=what)
            return len(data)
        try:
            region.view[start:start + len(data)] = data
        except ValueError:
            raise InvalidInput(f"{what}: shared-memory region {region.name!r} was unregistered "
                               "before the output could be written") from None
        return len(data)
