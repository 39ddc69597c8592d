"""``gpulanes serve``'s command line. Kept outside ``gpulanes.serve`` so that ``--help`` and
``--example-config`` answer without the server extra installed (gpulanes.serve imports
Starlette)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional

# The commented example config, shipped with the package (a copy of examples/serve/serve.toml;
# tests/python/test_cli.py keeps them equal).
EXAMPLE_CONFIG = Path(__file__).with_name("example_serve.toml")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpulanes serve",
        description="Serve the models of CONFIG over KServe v2 (HTTP and gRPC).",
        epilog="CONFIG is a TOML file with [server], [runtime] and one [models.NAME] table per "
               "model; every key is in the README's 'Serving over the network' section. "
               "`gpulanes serve --example-config > serve.toml` writes a commented example.")
    p.add_argument("config", nargs="?", help="TOML file: [server], [runtime], [models.NAME]")
    p.add_argument("--host", help="address to bind (default: the config's, else 127.0.0.1)")
    p.add_argument("--http-port", type=int, help="0: any free port, -1: no HTTP")
    p.add_argument("--grpc-port", type=int, help="0: any free port, -1: no gRPC")
    p.add_argument("--example-config", action="store_true",
                   help="print a commented example config and exit")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.example_config:
        print(EXAMPLE_CONFIG.read_text(), end="")
        return 0
    if args.config is None:
        p.error("give a CONFIG.toml (or --example-config)")
    from .errors import GpuLanesError
    from .serve.config import load_config
    from .serve.server import _run, _say, serve

    try:
        cfg = load_config(args.config)
        for key in ("host", "http_port", "grpc_port"):
            if getattr(args, key) is not None:
                setattr(cfg, key, getattr(args, key))
        return _run(serve(cfg))
    except GpuLanesError as e:
        _say(f"error: {e}")
        return 2
