"""KServe v2 tensor data as gpulanes takes and gives it, for both front ends: JSON lists and
little-endian binary data into checked torch tensors and back, and BYTES tensors (strings).

A BYTES tensor is held as a numpy array of ``bytes`` objects (dtype object, as tritonclient holds
them) with its protocol shape: ``[rows, 1]`` for a batched model's string input (one string per
row, which is one request's ``str``), ``[n]`` for a model without a batch dimension (its whole
``List[str]``). In binary form each element is its length (4 bytes, little-endian) and then its
bytes; every length is checked against what is left before anything is read.
"""

from __future__ import annotations

import math
import struct
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import InvalidInput

# KServe v2 datatypes and the torch dtypes they carry; BYTES is carried as strings (``str``, as
# Runtime.input_signature says of a string input).
DATATYPES: Dict[str, Any] = {
    "BOOL": torch.bool, "UINT8": torch.uint8, "INT8": torch.int8, "INT16": torch.int16,
    "INT32": torch.int32, "INT64": torch.int64, "FP16": torch.float16, "BF16": torch.bfloat16,
    "FP32": torch.float32, "FP64": torch.float64,
}
# torch >= 2.3 has unsigned 16-64 bit tensors (few operators work on them).
DATATYPES.update({name: getattr(torch, attr) for name, attr in
                  (("UINT16", "uint16"), ("UINT32", "uint32"), ("UINT64", "uint64"))
                  if hasattr(torch, attr)})
DATATYPES["BYTES"] = str
NAMES: Dict[Any, str] = {v: k for k, v in DATATYPES.items()}


def tensor_from_list(name: str, shape: Tuple[int, ...], dtype: torch.dtype, data: Any) -> torch.Tensor:
    if not isinstance(data, list):
        raise InvalidInput(f"input {name!r}: data must be a list")
    try:
        # Parsed wide first, then checked: a value the datatype cannot hold is refused, never
        # wrapped (UINT8 -1), truncated (INT64 1.5), overflowed (FP32 1e39) or coerced (BOOL 2).
        src = torch.tensor(data, dtype=torch.float64 if dtype.is_floating_point else None)
        if src.is_floating_point() and src.dtype != torch.float64:  # torch's default float32
            src = torch.tensor(data, dtype=torch.float64)  # would round what the check reads
        t = _checked(name, src, dtype).flatten()
    except (TypeError, ValueError, RuntimeError, OverflowError, RecursionError) as e:
        raise InvalidInput(f"input {name!r}: data does not fit {NAMES[dtype]}: {e}") from None
    if t.numel() != math.prod(shape):
        raise InvalidInput(f"input {name!r}: {t.numel()} values for shape {list(shape)} "
                           f"({math.prod(shape)} expected)")
    return t.reshape(shape)


def _checked(name: str, src: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`src` (JSON values as torch parsed them) as `dtype`, when every value fits it."""
    def refuse(why: str):
        raise InvalidInput(f"input {name!r}: {why} for {NAMES[dtype]}")

    if src.numel() == 0:
        return src.to(dtype)
    if dtype == torch.bool:
        if src.dtype != torch.bool:
            refuse("values must be true or false")
    elif dtype.is_floating_point:
        if bool((src.abs() > torch.finfo(dtype).max).any()):
            refuse(f"a value is beyond +-{torch.finfo(dtype).max:g}")
    else:
        if src.dtype == torch.bool or src.is_floating_point():
            whole = src.dtype != torch.bool and bool((src == src.round()).all())
            if not whole:
                refuse("values must be integers")
        info = torch.iinfo(dtype)
        # int64 values compared with UINT64's top would overflow the comparison: none is above it
        hi = min(info.max, torch.iinfo(torch.int64).max) if src.dtype == torch.int64 else info.max
        if bool((src < info.min).any()) or bool((src > hi).any()):
            refuse(f"a value is outside [{info.min}, {info.max}]")
    return src.to(dtype)


def tensor_from_bytes(name: str, shape: Tuple[int, ...], dtype: torch.dtype, raw) -> torch.Tensor:
    """A view of ``raw`` (little-endian, row-major; writable, so no copy is needed)."""
    size = math.prod(shape) * dtype.itemsize
    if len(raw) != size:
        raise InvalidInput(f"input {name!r}: {len(raw)} bytes of binary data; shape "
                           f"{list(shape)} of {NAMES[dtype]} needs {size}")
    if size == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(raw, dtype=dtype).reshape(shape)


def tensor_bytes(t: torch.Tensor) -> bytes:
    if t.device.type != "cpu":
        t = t.cpu()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: the same bytes as int16
        t = t.view(torch.int16)
    return t.numpy().tobytes()  # row-major, whatever the tensor's strides


def is_strings(x: Any) -> bool:
    """Whether a decoded input or an output is a BYTES tensor (not a torch tensor)."""
    return isinstance(x, np.ndarray)


def datatype_of(x: Any) -> str:
    """The KServe datatype of a torch tensor or BYTES array ("" when the protocol has none)."""
    return "BYTES" if is_strings(x) else NAMES.get(x.dtype, "")


def byte_size(shape: Sequence[int], dtype: Any) -> Optional[int]:
    """Bytes of an input's data of ``shape``; None for BYTES (its strings say their lengths)."""
    return None if dtype is str else math.prod(shape) * dtype.itemsize


def decode_list(name: str, shape: Tuple[int, ...], dtype: Any, data: Any) -> Any:
    """An input given as a JSON list."""
    if dtype is str:
        return strings_from_list(name, shape, data)
    return tensor_from_list(name, shape, dtype, data)


def decode_bytes(name: str, shape: Tuple[int, ...], dtype: Any, raw: Any) -> Any:
    """An input given as binary data (a body section, raw contents, a shared-memory region)."""
    if dtype is str:
        return strings_from_bytes(name, shape, raw)
    return tensor_from_bytes(name, shape, dtype, raw)


def encode_bytes(x: Any) -> bytes:
    """An output as binary data."""
    if is_strings(x):
        return b"".join(struct.pack("<I", len(s)) + s for s in x.reshape(-1))
    return tensor_bytes(x)


def encode_list(name: str, x: Any) -> List[Any]:
    """An output as a flat JSON list; InvalidInput for what JSON cannot carry (NaN, infinity,
    bytes that are not UTF-8), with the way to ask for it instead."""
    binary = ("ask for it as binary data (parameters.binary_data_output = true, or the "
              "output's binary_data)")
    if is_strings(x):
        try:
            return [s.decode("utf-8") for s in x.reshape(-1)]
        except UnicodeDecodeError:
            raise InvalidInput(f"output {name!r} holds bytes that are not UTF-8, which JSON "
                               f"cannot carry: {binary}") from None
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise InvalidInput(f"output {name!r} holds NaN or infinity, which JSON cannot carry: "
                           f"{binary}")
    return x.detach().cpu().flatten().tolist()


# Strings one BYTES input may hold: decoding is a Python loop per string, so a body of a million
# empty strings (4 bytes each) must not hold the server's event loop for seconds.
MAX_STRINGS = 65536


def check_count(name: str, shape: Tuple[int, ...]) -> int:
    """prod(shape), the strings a BYTES input of `shape` holds; InvalidInput past MAX_STRINGS."""
    want = math.prod(shape)
    if want > MAX_STRINGS:
        raise InvalidInput(f"input {name!r}: shape {list(shape)} holds {want} strings; a BYTES "
                           f"input may hold at most {MAX_STRINGS}")
    return want


def strings_from_list(name: str, shape: Tuple[int, ...], data: Any) -> np.ndarray:
    """A BYTES input from JSON: a list (nested as the shape, or flat) of strings, as UTF-8."""
    if not isinstance(data, list):
        raise InvalidInput(f"input {name!r}: data must be a list")
    want = check_count(name, shape)
    flat: List[bytes] = []
    pending = [iter(data)]
    while pending:  # depth-first without recursion: nesting is bounded by the body size only
        item = next(pending[-1], StopIteration)
        if item is StopIteration:
            pending.pop()
        elif isinstance(item, list):
            if len(pending) >= len(shape):
                raise InvalidInput(f"input {name!r}: data is nested deeper than shape "
                                   f"{list(shape)}")
            pending.append(iter(item))
        elif isinstance(item, str):
            if len(flat) == want:  # one more than the shape holds: the rest need not be read
                raise InvalidInput(f"input {name!r}: more than {want} strings for shape "
                                   f"{list(shape)} ({want} expected)")
            try:
                flat.append(item.encode("utf-8"))
            except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape
                raise InvalidInput(f"input {name!r}: a string is not valid Unicode") from None
        else:
            raise InvalidInput(f"input {name!r}: BYTES data must be strings, got "
                               f"{type(item).__name__}")
    return _strings(name, shape, flat)


def strings_from_bytes(name: str, shape: Tuple[int, ...], raw: Any) -> np.ndarray:
    """A BYTES input from binary data: exactly prod(shape) length-prefixed strings."""
    raw = memoryview(raw).cast("B")
    want = check_count(name, shape)
    flat: List[bytes] = []
    at = 0
    while at < len(raw):
        if len(raw) - at < 4:
            raise InvalidInput(f"input {name!r}: a string's length is cut off "
                               f"({len(raw) - at} bytes left)")
        if len(flat) == want:  # one more than the shape holds: the rest need not be read
            raise InvalidInput(f"input {name!r}: more than {want} strings for shape "
                               f"{list(shape)} ({want} expected)")
        (n,) = struct.unpack_from("<I", raw, at)
        at += 4
        if n > len(raw) - at:
            raise InvalidInput(f"input {name!r}: string {len(flat)} says it has {n} bytes, "
                               f"{len(raw) - at} are left")
        flat.append(bytes(raw[at:at + n]))
        at += n
    return _strings(name, shape, flat)


def _strings(name: str, shape: Tuple[int, ...], flat: List[bytes]) -> np.ndarray:
    if len(flat) != math.prod(shape):
        raise InvalidInput(f"input {name!r}: {len(flat)} strings for shape {list(shape)} "
                           f"({math.prod(shape)} expected)")
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(shape)


def utf8(s: Any) -> bytes:
    """A string output (``str``, or ``bytes`` where it was not UTF-8) as bytes."""
    return s if isinstance(s, bytes) else str(s).encode("utf-8", "surrogateescape")


def strings_array(values: Sequence[Any], shape: Tuple[int, ...]) -> np.ndarray:
    """A BYTES output of ``shape`` from string outputs."""
    out = np.empty(len(values), dtype=object)
    out[:] = [utf8(v) for v in values]
    return out.reshape(shape)
