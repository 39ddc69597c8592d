"""The README's first example is a file the suite runs, and the README shows it as it is."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_first_example_runs_as_written_and_the_readme_shows_it():
    example = ROOT / "examples" / "first_model.py"
    done = subprocess.run([sys.executable, str(example)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr[-3000:]
    met = int(re.search(r"^(\d+) requests met their deadline$", done.stdout, re.M).group(1))
    assert 0 < met <= 4  # of submit, infer, infer_async and the best-effort one (a busy machine may miss)
    readme = (ROOT / "README.md").read_text()
    shown = readme.split("## Using it", 1)[1].split("```python\n", 1)[1].split("```\n", 1)[0]
    source = example.read_text()
    assert shown == source[source.index('"""', 3) + 4:], "README's first example differs from the file"
