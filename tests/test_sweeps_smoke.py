"""End to end at CPU scale: `python -m sweeps run` trains two exp05 entries with Aim on, then
`python -m sweeps analyze` writes the group's table and the plots from that Aim repository."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_exp05_runs_end_to_end_and_is_analysed(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device
    common = ["--scale", "cpu", "--root", str(tmp_path / "runs"), "--repo", str(tmp_path)]

    def sweeps(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "sweeps", *args, *common], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=1100,
                              check=False)

    t0 = time.perf_counter()
    ran = sweeps("run", "exp05_[ab]", "--track", "--jobs", "2")
    wall = time.perf_counter() - t0
    print(f"smoke run wall time: {wall:.0f} s\n{ran.stdout}")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "2 done" in ran.stdout
    for name in ("exp05_a", "exp05_b"):
        assert (tmp_path / "runs" / name / "DONE").is_file()
    again = sweeps("run", "exp05_[ab]", "--track")
    assert again.returncode == 0 and "2 skipped" in again.stdout

    out = tmp_path / "analysis"
    analysed = sweeps("analyze", "exp05", "--out", str(out))
    assert analysed.returncode == 0, analysed.stdout + analysed.stderr
    assert "missing 4 runs" in analysed.stdout  # baseline (exp05_d), exp05_c, e, f
    with open(out / "exp05.csv") as f:
        rows = {r["entry"]: r for r in csv.DictReader(f)}
    for name, halt in (("exp05_a", "1"), ("exp05_b", "2")):
        assert rows[name]["halt_max_steps"] == halt
        assert float(rows[name]["steps"]) == 16
        assert 0.0 <= float(rows[name]["exact acc"]) <= 1.0
        assert float(rows[name]["inference steps"]) <= int(halt)
    for png in ("accuracy_vs_params", "pareto_time", "pareto_inference_steps",
                "learning_curves", "steps_to_target"):
        assert (out / f"{png}.png").stat().st_size > 5000, png
