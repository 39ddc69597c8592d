"""``gpulanes`` on the command line (also ``python -m gpulanes``)."""

import importlib.util
import sys
from typing import List, Optional

USAGE = """\
usage: gpulanes [-h] [-V] COMMAND ...

Serve many PyTorch models on shared GPUs with a deadline for every request.

commands:
  serve CONFIG.toml   serve the config's models over KServe v2 (HTTP and gRPC);
                      `gpulanes serve --help`, `gpulanes serve --example-config`
  ray CONFIG.toml     deploy them on the current Ray cluster (gpulanes.ray);
                      `gpulanes ray --help`

options:
  -h, --help          show this help and exit
  -V, --version       show gpulanes' version, the torch it was built against, and exit
"""

# What each command needs beyond the package's own dependencies: (modules, the extra).
_EXTRAS = {"serve": (("starlette", "uvicorn", "httptools", "grpc", "google.protobuf"),
                     "server"),
           "ray": (("ray", "starlette", "google.protobuf"), "ray")}


def version() -> str:
    import torch

    from . import __version__, _C

    cuda = f"CUDA {torch.version.cuda}" if _C.built_with_cuda else "no CUDA"
    return f"gpulanes {__version__} (torch {torch.__version__}, {cuda})"


def missing_extra(command: str) -> Optional[str]:
    """The one line to print when `command`'s extra is not installed, else None."""
    modules, extra = _EXTRAS[command]
    missing = []
    for m in modules:
        try:
            found = importlib.util.find_spec(m) is not None
        except (ImportError, ValueError):  # a parent package that is missing
            found = False
        if not found:
            missing.append(m.split(".")[0] if m != "google.protobuf" else "protobuf")
    if not missing:
        return None
    return (f"gpulanes {command}: needs the '{extra}' extra (missing: {', '.join(missing)}): "
            f'pip install "gpulanes[{extra}]"')


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(version())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in _EXTRAS:
        print(f"gpulanes: unknown command {command!r} (commands: serve, ray; see gpulanes --help)",
              file=sys.stderr)
        return 2
    # Checked before the command's modules are imported: a missing extra is one line, not a
    # traceback after the models were loaded. `serve --help` works without it.
    problem = missing_extra(command)
    if problem and not (command == "serve" and {"-h", "--help", "--example-config"} & set(rest)):
        print(problem, file=sys.stderr)
        return 2
    if command == "serve":
        from ._serve_cli import main as serve_main

        return serve_main(rest)
    from .ray import main as ray_main

    return ray_main(rest)


if __name__ == "__main__":
    sys.exit(main())
