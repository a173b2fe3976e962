"""Slow: the tiny presets learn visibly on CPU (python -m pytest -q -m slow)."""

from __future__ import annotations

import pytest

from trm.loop import train
from trm.run_config import parse_cli


@pytest.mark.slow
def test_sudoku_tiny_learns(tmp_path):
    """sudoku-tiny as is (625 steps, ~5 min on 2 quiet cores): 1000 generated Sudokus with 40
    clues (distinct up to symmetry, none of the 128 test puzzles in training); the EMA
    weights solve >= half of the test puzzles exactly. Measured (2026-12-01, 2 cores shared):
    test exact accuracy 0 / 0 / 0 / 0.43 / 0.70 / 0.82 / 0.88 / 0.87 at steps 78 .. 625."""
    result = train(parse_cli(["sudoku-tiny", "--no-track", "--run-dir", str(tmp_path),
                              "--data.data-dir", str(tmp_path / "data")]), progress=False)
    test = result.eval_metrics["test"]
    print("sudoku-tiny test metrics:", test)
    assert result.steps == 625
    assert test["exact_accuracy"] >= 0.5, test


@pytest.mark.slow
def test_maze_tiny_learns(tmp_path):
    """maze-tiny as is (1000 steps, ~6 min on 2 quiet cores): 1000 generated 7x7 mazes
    (distinct up to the 8 rotations/reflections, none of the 128 test mazes in training); the
    EMA weights mark the exact shortest path of >= half of the test mazes. Measured
    (2026-12-01, 2 cores shared): test exact accuracy 0.26 at step 500, 0.55 at 750, 0.70 at
    1000."""
    result = train(parse_cli(["maze-tiny", "--no-track", "--run-dir", str(tmp_path),
                              "--data.data-dir", str(tmp_path / "data")]), progress=False)
    test = result.eval_metrics["test"]
    print("maze-tiny test metrics:", test)
    assert result.steps == 1000
    assert test["exact_accuracy"] >= 0.5, test
