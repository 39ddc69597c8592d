"""scikit-build-core metadata plugin: the wheel names the torch it is built against.

The extension links the torch of the build environment and runs under that torch only (its
C++ ABI changes between releases; `gpulanes/_build_info.py` refuses another at import). So the
wheel says so, as packages built against torch conventionally do: a local version label
(``0.1.0+torch2.14.1.cu130``) and ``Requires-Dist: torch==2.14.1``, which pip then enforces.
The public version comes from ``python/gpulanes/__init__.py`` (one place to change it).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, List, Mapping, Union

_INIT = Path(__file__).resolve().parents[2] / "python" / "gpulanes" / "__init__.py"


def _torch_version() -> str:
    try:
        import torch
    except ImportError:
        raise SystemExit("gpulanes builds against the torch of its environment, and this one has "
                         "none: install torch first, then `pip install --no-build-isolation .` "
                         "(build isolation would hide it)") from None
    return torch.__version__


def dynamic_metadata(field: str, settings: Mapping[str, Any]) -> Union[str, List[str]]:
    torch_version = _torch_version()
    public = torch_version.split("+")[0]
    if field == "version":
        found = re.search(r'^__version__ = "([^"]+)"', _INIT.read_text(), re.M)
        if found is None:
            raise SystemExit(f"no __version__ in {_INIT}")
        local = re.sub(r"[^A-Za-z0-9.]", ".", torch_version.replace("+", "."))
        return f"{found.group(1)}+torch{local}"
    if field == "dependencies":
        return [f"torch=={public}", *settings.get("others", [])]
    raise SystemExit(f"gpulanes_torch_pin provides version and dependencies, not {field}")
