"""A short soak (benchmarks/soak.py's cycle): bad inputs, past and impossible deadlines, bursts
beyond capacity and re-layouts mixed into one runtime's life, draining or not at the end; every
future resolves exactly once with the right result or a typed error, and the counters add up."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import soak  # noqa: E402


@pytest.mark.parametrize("drain", [True, False])
def test_a_short_soak_loses_nothing(drain):
    row = soak.cycle(12_000, seed=7 if drain else 8, drain=drain)
    assert row["resolved_exactly_once"], row
    assert row["wrong_results"] == 0 and row["counters_add_up"], row
    assert row["outcomes"].get("result", 0) > 0
    assert any(k.startswith("refused") for k in row["outcomes"])  # the bursts were refused
