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


def python_blocks(text: str):
    return re.findall(r"^```python\n(.*?)^```$", text, re.S | re.M)


def test_every_python_block_of_the_readme_runs_or_is_shown_from_a_file_that_does(tmp_path):
    """Each block is shown verbatim from a file in examples/ that the suite runs, or runs here
    as written (on the CPU), or, when it says in its first line that it needs a GPU, at least
    compiles."""
    readme = (ROOT / "README.md").read_text()
    examples = [p.read_text() for p in (ROOT / "examples").glob("*.py")]
    blocks = python_blocks(readme)
    assert len(blocks) >= 5
    ran = 0
    for block in blocks:
        compile(block, "README.md", "exec")
        if block.startswith("# needs a GPU") or any(block.strip() in src for src in examples):
            continue
        done = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True,
                              timeout=300, cwd=tmp_path,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        assert done.returncode == 0, f"README block failed:\n{block}\n{done.stderr[-3000:]}"
        ran += 1
    assert ran >= 2  # the process lanes and the simulator
