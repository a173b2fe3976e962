"""Slow: two processes x two CPU devices (jax.distributed on loopback) train like one process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from data.generate import ensure_tiny_dataset

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(run: Path, data: Path) -> list[str]:
    return ["sudoku-tiny", "--no-track", "--run-dir", str(run), "--data.data-dir", str(data),
            "--data.num-train", "48", "--data.num-test", "16", "--model.hidden-size", "32",
            "--model.num-heads", "2", "--model.L-cycles", "1", "--model.halt-max-steps", "3",
            "--optim.global-batch-size", "8", "--optim.epochs", "2", "--eval.eval-interval",
            "1", "--max-steps", "6"]


def _eval_line(output: str) -> str:
    return [line for line in output.splitlines() if line.startswith("eval test")][-1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    data = ensure_tiny_dataset("sudoku", tmp_path / "data", train_count=48, test_count=16)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, "train.py", *_args(tmp_path / "multi", data), "--mesh.distributed",
         "--mesh.coordinator-address", f"127.0.0.1:{port}", "--mesh.num-processes", "2",
         "--mesh.process-id", str(i)], cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) for i in (0, 1)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    single = subprocess.run(
        [sys.executable, "train.py", *_args(tmp_path / "single", data), "--mesh.data", "4"],
        cwd=ROOT, text=True, capture_output=True, timeout=600,
        env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    assert single.returncode == 0, single.stderr[-2000:]
    assert _eval_line(outs[0]) == _eval_line(outs[1]) == _eval_line(single.stdout)
    saved = {p.name for p in (tmp_path / "multi" / "checkpoints").iterdir()}
    assert "6" in saved
