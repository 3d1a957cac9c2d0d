"""Runs equal to the golden digests (tests/golden.json; tests/golden.py says how to regenerate them). The capped
default preset's case takes minutes: `PYTHONPATH=. python tests/golden.py --default` compares it."""

from __future__ import annotations

import json
from pathlib import Path

from golden import GOLDEN, TINY_CASES, compare, run_cases


def test_tiny_runs_equal_the_golden_traces_and_aucs(tmp_path: Path) -> None:
    """The tiny scenario with both detectors and both aggregator placements: messages, links, compute (less
    wall_s) and AUCs byte for byte as the reference code wrote them."""
    found = run_cases(TINY_CASES, tmp_path)
    assert compare(found, json.loads(GOLDEN.read_text())) == []

