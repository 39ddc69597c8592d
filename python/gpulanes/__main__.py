"""``gpulanes`` on the command line (also ``python -m gpulanes``). Subcommands:

- ``gpulanes serve CONFIG.toml``: serve the config's models over KServe v2 (HTTP and gRPC).
- ``gpulanes ray CONFIG.toml``: deploy them on the current Ray cluster (gpulanes.ray).
"""

import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "serve":
        from .serve.server import main as serve_main

        return serve_main(rest)
    if command == "ray":
        from .ray import main as ray_main

        return ray_main(rest)
    print(f"gpulanes: unknown command {command!r}; try 'gpulanes serve CONFIG.toml' or 'gpulanes ray CONFIG.toml'",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
