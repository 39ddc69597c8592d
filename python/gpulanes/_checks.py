"""Type checks of public arguments: a wrong type, NaN or an infinity gets an InvalidInput that
names the argument, never a pybind11 "incompatible function arguments" or a bare ValueError.
Ranges are checked in the core (csrc/gpulanes/core/check.h), so C++ callers get the same answers."""

from __future__ import annotations

import math
import numbers
from typing import Any, List

from .errors import InvalidInput


def _number(name: str, value: Any, integer: bool = False) -> Any:
    """`value` as a finite int (integer) or float; InvalidInput naming `name` otherwise. Ranges
    are the core's to check, so that C++ callers get the same answers."""
    kind = "an integer" if integer else "a number"
    if not isinstance(value, numbers.Real) and getattr(value, "ndim", None) == 0 \
            and hasattr(value, "__float__") and not _is_bool_scalar(value):
        # A 0-d tensor or numpy array, as torch and numpy users pass them.
        try:
            value = value.item() if hasattr(value, "item") else float(value)
        except (RuntimeError, NotImplementedError, TypeError, ValueError) as e:
            raise InvalidInput(f"{name} must be {kind}, got {type(value).__name__} that has no "
                               f"value ({e.__class__.__name__})") from None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidInput(f"{name} must be {kind}, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise InvalidInput(f"{name} must be finite, got {value}")
    if integer:
        if int(value) != value:
            raise InvalidInput(f"{name} must be an integer, got {value!r}")
        if abs(value) > 2**31 - 1:  # the core's integers are 32-bit
            raise InvalidInput(f"{name} is out of range: {value!r}")
        return int(value)
    return float(value)


def _is_bool_scalar(value: Any) -> bool:
    dtype = str(getattr(value, "dtype", ""))
    return dtype in ("bool", "torch.bool")


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, int)) or value not in (0, 1):
        raise InvalidInput(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _numbers(name: str, value: Any, integer: bool = False) -> List[Any]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise InvalidInput(f"{name} must be a list of {'integers' if integer else 'numbers'}, "
                           f"got {type(value).__name__} {value!r}")
    return [_number(f"{name}[{i}]", v, integer) for i, v in enumerate(value)]
