"""Slow: the tiny presets learn visibly on CPU (python -m pytest -q -m slow)."""

from __future__ import annotations

import pytest

from trm.loop import train
from trm.run_config import parse_cli


@pytest.mark.slow
def test_sudoku_tiny_learns(tmp_path):
    """sudoku-tiny (625 steps, 10-13 min on 2 cores): test token accuracy of the EMA weights
    rises from chance (~0.11 over 9 digits) to >= 0.4 (measured: 0.45)."""
    result = train(parse_cli(["sudoku-tiny", "--no-track", "--run-dir", str(tmp_path),
                              "--data.data-dir", str(tmp_path / "data")]), progress=False)
    curve = [m["accuracy"] for m in result.train_metrics if "accuracy" in m]
    assert result.steps == 625
    assert result.eval_metrics["test"]["accuracy"] >= 0.4, curve[::50]
