"""The core's layers read one way (README, "Architecture"): the scheduling and planning layers
never include the executing or simulating ones, and only csrc/bindings includes Python."""

import re
from pathlib import Path

CSRC = Path(__file__).resolve().parents[2] / "csrc"
INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^">]+)[">]', re.M)
# layer -> the layers it must not include
FORBIDDEN = {
    "core": {"model", "queue", "predict", "sched", "plan", "exec", "metrics", "runtime", "sim"},
    "queue": {"sched", "plan", "exec", "runtime", "sim"},
    "predict": {"sched", "plan", "exec", "runtime", "sim"},
    "sched": {"plan", "exec", "runtime", "sim"},
    "plan": {"exec", "runtime", "sim"},
    "model": {"sched", "plan", "exec", "runtime", "sim"},
    "metrics": {"sched", "plan", "exec", "runtime", "sim"},
}


def includes(path: Path):
    return INCLUDE.findall(path.read_text())


def test_lower_layers_never_include_higher_ones():
    wrong = []
    for layer, forbidden in FORBIDDEN.items():
        for f in sorted((CSRC / "gpulanes" / layer).glob("*.[ch]*")):
            for inc in includes(f):
                parts = inc.split("/")
                if parts[0] == "gpulanes" and len(parts) > 2 and parts[1] in forbidden:
                    wrong.append(f"{f.relative_to(CSRC)} includes {inc}")
    assert wrong == []


def test_only_the_bindings_include_python():
    wrong = [f"{f.relative_to(CSRC)} includes {inc}"
             for f in sorted((CSRC / "gpulanes").rglob("*.[ch]*"))
             for inc in includes(f)
             if inc.startswith(("pybind11/", "Python.h", "torch/extension.h", "torch/python.h"))]
    assert wrong == []
