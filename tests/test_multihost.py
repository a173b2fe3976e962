"""Slow: two processes x two CPU devices (jax.distributed on loopback) train and evaluate like
one process with four devices."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import pytest
from test_data_fixtures import built_arc, built_sudoku
from test_evaluate_cli import save_tiny_checkpoint

from trm.eval_source import restore_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict[str, str]:
    return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                PYTHONPATH=str(ROOT))


def start_two_processes(script: str, args: list[str]) -> list[subprocess.Popen]:
    """`python script args` started as processes 0 and 1 of a 2 x 2-device job."""
    port = _free_port()
    return [subprocess.Popen(
        [sys.executable, script, *args, "--mesh.distributed",
         "--mesh.coordinator-address", f"127.0.0.1:{port}", "--mesh.num-processes", "2",
         "--mesh.process-id", str(i)], cwd=ROOT, env=_env(2), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in (0, 1)]


def two_processes(script: str, args: list[str]) -> list[str]:
    """stdout of `python script args` run as processes 0 and 1 of a 2 x 2-device job."""
    procs = start_two_processes(script, args)
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    return [out for out, _ in outs]


def one_process(script: str, args: list[str]) -> str:
    """stdout of `python script args` on one process with 4 devices."""
    done = subprocess.run([sys.executable, script, *args, "--mesh.data", "4"], cwd=ROOT,
                          env=_env(4), text=True, capture_output=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


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
    data = tmp_path / "data"  # both processes generate it at once (ensure_tiny_dataset)
    outs = two_processes("train.py", _args(tmp_path / "multi", data))
    single = one_process("train.py", _args(tmp_path / "single", data))
    assert _eval_line(outs[0]) == _eval_line(single)
    assert "eval test" not in outs[1]  # process 0 alone prints
    saved = {p.name for p in (tmp_path / "multi" / "checkpoints").iterdir()}
    assert "6" in saved
    # the weights agree up to the order of the cross-process gradient sum (~1e-6)
    multi, one = (jax.tree.leaves(eqx.filter(restore_checkpoint(
        tmp_path / run / "checkpoints", 6, raw_weights=True).model, eqx.is_array))
        for run in ("multi", "single"))
    for a, b in zip(multi, one, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=2e-5)


@pytest.mark.slow
def test_sigterm_to_one_process_saves_one_step_on_all_and_the_run_resumes(tmp_path):
    """A preemption notice to one host: every process saves the same step (jax.distributed's
    preemption service agrees on it), all exit 143, and rerunning the command resumes."""
    data = tmp_path / "data"
    long_run = [*_args(tmp_path / "run", data)[:-2], "--optim.epochs", "200",
                "--eval.eval-interval", "200"]  # hundreds of steps, no checkpoint before the end
    procs = start_two_processes("train.py", long_run)
    try:
        for line in procs[0].stdout:  # compiled: steps are running
            if line.startswith("compiling the train step"):
                break
        time.sleep(np.random.default_rng().uniform(2.0, 4.0))
        procs[1].send_signal(signal.SIGTERM)
        errs = [p.communicate(timeout=300)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [143, 143], [e[-2000:] for e in errs]
    saved = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir()
                   if p.name.isdigit())
    assert len(saved) == 1 and saved[0] >= 1, saved  # exit 143: stopped before its end
    notice = (f"notice: saved checkpoint step {saved[0]} before stopping; rerun the command "
              "to resume")
    assert notice in errs[0] and notice not in errs[1], errs[0][-2000:]
    assert all("Traceback" not in e and e.rstrip().endswith("terminated") for e in errs), errs
    assert not any("Reached preemption sync point" in e for e in errs)  # orbax's log line
    resumed = two_processes("train.py", [*long_run, "--max-steps", str(saved[0] + 2)])
    assert f"at step {saved[0]} of {saved[0] + 2}" in resumed[0]
    assert str(saved[0] + 2) in {p.name for p in (tmp_path / "run" / "checkpoints").iterdir()}


TIMING = ("seconds", "puzzles_per_s")


def _summary(stdout: str) -> str:
    """The printed results without throughput, gloo's connection lines and output paths."""
    lines = [re.sub(r"[0-9.]+ puzzles/s", "", line) for line in stdout.splitlines()
             if not line.startswith(("[Gloo]", "wrote "))]
    return "\n".join(lines)


def _without_timing(doc: dict, out_dir: Path) -> dict:
    """The results JSON without wall-clock fields, output paths relative to out_dir."""
    text = json.dumps(doc).replace(str(out_dir), "OUT")
    doc = json.loads(text)
    doc.pop("seconds")
    for s in doc["sets"].values():
        for k in TIMING:
            s.pop(k)
    return doc


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sudoku", "arc"])
def test_evaluation_on_two_processes_matches_one(kind, tmp_path):
    """Results JSON, per-step plot and ARC submission of 2 processes x 2 devices equal those of
    1 process x 4 devices; only process 0 prints and writes."""
    data = (built_sudoku(tmp_path, n_train=16, n_test=20) if kind == "sudoku"
            else built_arc(tmp_path, num_aug=3))
    ckpt, _ = save_tiny_checkpoint(tmp_path / "run", data)
    common = ["--checkpoint-dir", str(ckpt), "--data-dir", str(data), "--no-progress",
              "--batch-size", "8"]
    multi = two_processes("evaluate.py", [*common, "--out", str(tmp_path / "multi/res.json")])
    single = one_process("evaluate.py", [*common, "--out", str(tmp_path / "single/res.json")])
    printed = [_summary(out) for out in (*multi, single)]
    assert printed[0] == printed[2] and "exact" in printed[0]
    assert printed[1] == "", repr(multi[1])  # raw: once (1 of ~30 runs) it held a stray "3)"
    files = {d: sorted(p.name for p in (tmp_path / d).iterdir()) for d in ("multi", "single")}
    expected = ["res.json", "res_per_step.png"] + (["res_submission.json"] if kind == "arc"
                                                   else [])
    assert files["multi"] == files["single"] == expected
    docs = {d: json.loads((tmp_path / d / "res.json").read_text()) for d in files}
    assert docs["multi"]["devices"] == docs["single"]["devices"] == 4
    assert (_without_timing(docs["multi"], tmp_path / "multi")
            == _without_timing(docs["single"], tmp_path / "single"))
    for name in expected[1:]:
        assert (tmp_path / "multi" / name).read_bytes() == (tmp_path / "single" / name).read_bytes()
    if kind == "arc":
        assert docs["single"]["sets"]["test"]["arc"]["tasks"] == 2


def test_a_process_waiting_for_its_peers_says_so_and_stops_on_sigterm(tmp_path):
    """jax.distributed waits minutes in silence for a missing process (then aborts): the
    command says first what it waits for, and a signal stops the wait at once."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "evaluate.py", "--checkpoint-dir", str(tmp_path), "--mesh.distributed",
         "--mesh.coordinator-address", f"127.0.0.1:{port}", "--mesh.num-processes", "2",
         "--mesh.process-id", "0"], cwd=ROOT, env=_env(2), text=True, stderr=subprocess.PIPE)
    try:
        line = proc.stderr.readline().strip()
        proc.terminate()
        rest = proc.communicate(timeout=30)[1]
    finally:
        proc.kill()
        proc.wait()
    assert line == (f"process 0: waiting for all 2 processes at 127.0.0.1:{port} (at most "
                    "300 s, --mesh.join-timeout)")
    assert proc.returncode == 143 and rest.strip() == "terminated"


_SIGTERM_AFTER_INITIALIZE = """
import os, signal, sys, time
from trm.cli import Terminated, sigterm_as_interrupt
from trm.preflight import initialize_distributed
from trm.run_config import MeshConfig
with sigterm_as_interrupt():
    mesh = MeshConfig(distributed=True, coordinator_address=sys.argv[1], num_processes=1,
                      process_id=0)
    initialize_distributed(mesh, mesh)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    except Terminated:
        print("Terminated")
"""


def test_sigterm_after_jax_distributed_starts_still_stops_the_command():
    """jax.distributed.initialize installs its preemption notifier as the SIGTERM handler, which
    only records the signal: a command without a preemption sync point (evaluate.py) gets
    Python's handler back, so SIGTERM still stops it."""
    done = subprocess.run([sys.executable, "-c", _SIGTERM_AFTER_INITIALIZE,
                           f"127.0.0.1:{_free_port()}"], cwd=ROOT, env=_env(1), text=True,
                          capture_output=True, timeout=120, check=False)
    assert done.stdout.strip() == "Terminated", done.stderr[-2000:]


def test_a_process_whose_peers_never_join_stops_with_one_line(tmp_path):
    """Without its peers a process stops after --mesh.join-timeout with one line (jax itself
    would abort it with a C++ stack trace, exit status 134)."""
    port = _free_port()
    done = subprocess.run(
        [sys.executable, "train.py", "sudoku-tiny", "--no-track", "--run-dir", str(tmp_path),
         "--mesh.distributed", "--mesh.coordinator-address", f"127.0.0.1:{port}",
         "--mesh.num-processes", "2", "--mesh.process-id", "0", "--mesh.join-timeout", "3"],
        cwd=ROOT, env=_env(2), text=True, capture_output=True, timeout=120, check=False)
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.splitlines()[-1] == (
        f"error: --mesh.distributed: not every process joined at 127.0.0.1:{port} within 3 s "
        "(--mesh.join-timeout): start the same command on every host, each with its own "
        "--mesh.process-id from 0 to --mesh.num-processes - 1"), done.stderr[-2000:]
    assert "Traceback" not in done.stderr and not list(tmp_path.iterdir())


def test_processes_started_with_different_settings_stop_naming_the_flag(tmp_path):
    """Every host must run the same command: a process with another --optim.lr would train
    with it, silently, beside the others."""
    args = ["sudoku-tiny", "--no-track", "--run-dir", str(tmp_path / "run"), "--data.data-dir",
            str(tmp_path / "data")]
    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, "train.py", *args, *(["--optim.lr", "0.001"] if i else []),
         "--mesh.distributed", "--mesh.coordinator-address", f"127.0.0.1:{port}",
         "--mesh.num-processes", "2", "--mesh.process-id", str(i)], cwd=ROOT, env=_env(2),
        text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in (0, 1)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [2, 2], errs
    line = ("error: the processes were started with different settings: process 1 has "
            "--optim.lr 0.001, process 0 0.003; run the same command on every host (only "
            "--mesh.process-id differs)")
    assert all(e.splitlines()[-1] == line for e in errs), errs
    assert not (tmp_path / "data").exists()  # stopped before any work
