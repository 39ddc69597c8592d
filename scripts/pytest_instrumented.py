"""pytest, importing gpulanes from $GPULANES_EXTENSION_DIR (the sources next to an instrumented
_C, as scripts/sanitize.sh lays them out) instead of the editable dev install."""

import os
import sys

# The editable install's import hooks sit first on sys.meta_path and would win over sys.path.
sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__name__.startswith("ScikitBuild")]
sys.path.insert(0, os.environ["GPULANES_EXTENSION_DIR"])

import pytest  # noqa: E402

import gpulanes  # noqa: E402

where = os.path.dirname(gpulanes._C.__file__)
if os.path.realpath(where) != os.path.realpath(os.path.join(os.environ["GPULANES_EXTENSION_DIR"], "gpulanes")):
    sys.exit(f"imported gpulanes._C from {where}, not the instrumented build")
sys.exit(pytest.main(sys.argv[1:]))
