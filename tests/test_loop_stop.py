"""How a training run stops from outside: SIGKILL, SIGTERM and Ctrl-C at a random moment, and
a second run on a checkpoint directory that is in use."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_loop import ROOT, leaves, messages, saved_steps, tiny_args

import train as train_cli
from trm import preflight
from trm.loop import train
from trm.run_config import parse_cli


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data") / "sudoku"


def started_until_first_checkpoint(args: list[str], checkpoints: Path,
                                   **popen: object) -> subprocess.Popen:
    """`train.py args` in a subprocess, returned once it saved its first step (or ended)."""
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, **popen)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir()):
            break
        time.sleep(0.1)
    return proc


def test_resume_after_sigkill(tmp_path, data_dir):
    args = tiny_args(tmp_path / "killed", data_dir, "--checkpoint.every-n-steps", "2",
                     "--max-steps", "10", "--mesh.data", "2")
    proc = started_until_first_checkpoint(args, tmp_path / "killed" / "checkpoints",
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(np.random.default_rng().uniform(0.0, 2.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = train(parse_cli(args), progress=False)
    straight = train(parse_cli(tiny_args(tmp_path / "straight", data_dir, "--max-steps", "10",
                                         "--mesh.data", "2")), progress=False)
    assert resumed.steps == straight.steps == 10
    for a, b in zip(leaves(straight.state), leaves(resumed.state)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("sig, code, word, workers", [
    (signal.SIGTERM, 143, "terminated", 0),
    pytest.param(signal.SIGINT, 130, "interrupted", 1, marks=pytest.mark.slow)])
def test_a_signal_stops_training_with_one_line(tmp_path, data_dir, sig, code, word, workers):
    """SIGTERM (a scheduler's stop) and Ctrl-C mid-run: one line, exit 128 + signal, no crash
    at exit (a segfault after `interrupted` was seen), and the run goes on when rerun. Ctrl-C
    goes to the whole process group, as a terminal sends it, Grain's worker processes
    included."""
    ensure = train(parse_cli(tiny_args(tmp_path / "data_made", data_dir, "--max-steps", "1")),
                   progress=False)  # the data set exists before the timed part
    assert ensure.steps == 1
    args = tiny_args(tmp_path / "run", data_dir, "--checkpoint.every-n-steps", "1",
                     "--data.num-workers", str(workers))
    proc = started_until_first_checkpoint(args, tmp_path / "run" / "checkpoints", text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          start_new_session=True)
    if workers:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert messages(err)[-1] == word and "Traceback" not in err and "leaked" not in err, err
    steps = saved_steps(tmp_path / "run")
    assert steps and train(parse_cli(args + ["--max-steps", str(steps[-1] + 1)]),
                           progress=False).steps == steps[-1] + 1


def test_a_signal_while_generating_the_data_set_leaks_nothing(tmp_path):
    """SIGTERM while the generator's worker pool runs: `terminated`, no data set, and no
    "leaked semaphore" warning from multiprocessing's resource tracker (which prints after the
    process has ended)."""
    err_file = tmp_path / "err.txt"
    with open(err_file, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "train.py", *tiny_args(tmp_path / "run", tmp_path / "data",
                                                    "--data.num-train", "3000")],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.time() + 120
        while time.time() < deadline and "sudoku:" not in err_file.read_text():
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143
    time.sleep(2.0)  # the resource tracker's warning, if any, comes after the exit
    text = err_file.read_text()
    assert "sudoku:" in text and messages(text)[-1] == "terminated", text[-2000:]
    assert "leaked" not in text and "Traceback" not in text, text[-2000:]
    assert not (tmp_path / "data").exists()


def test_sigterm_saves_the_step_reached_and_the_run_resumes_exactly(tmp_path, data_dir):
    """A preemption notice between checkpoints: the step reached is saved (with the data
    position), so resuming from it gives the same state as a run that was never stopped."""
    ensure = train(parse_cli(tiny_args(tmp_path / "data_made", data_dir, "--max-steps", "1")),
                   progress=False)  # the data set exists before the timed part
    assert ensure.steps == 1
    def args(run: str, *extra: str) -> list[str]:  # 600 steps, no checkpoint before the end
        return tiny_args(tmp_path / run, data_dir, "--optim.epochs", "100",
                         "--eval.eval-interval", "100", *extra)
    proc = subprocess.Popen([sys.executable, "train.py", *args("run")], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in proc.stdout:  # compiled: steps are running
        if line.startswith("compiling the train step"):
            break
    time.sleep(np.random.default_rng().uniform(1.0, 2.0))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    *_, notice, last = messages(err)
    assert last == "terminated" and "Traceback" not in err, err[-2000:]
    (step,) = saved_steps(tmp_path / "run")
    assert 1 <= step < 600
    assert notice == (f"notice: saved checkpoint step {step} before stopping; rerun the "
                      "command to resume")
    until = ["--max-steps", str(step + 2)]
    resumed = train(parse_cli(args("run", *until)), progress=False)
    straight = train(parse_cli(args("straight", *until)), progress=False)
    assert resumed.steps == straight.steps == step + 2
    for a, b in zip(leaves(straight.state), leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_two_sigterms_during_an_evaluations_save_keep_it(tmp_path, data_dir):
    """SIGTERM as an evaluation's asynchronous save starts, and again while the run stops:
    the save is finished (not written twice, no temporary directory left) and the run
    resumes from it."""
    args = tiny_args(tmp_path / "run", data_dir, "--optim.epochs", "100", "--eval.eval-interval",
                     "10", "--checkpoint.async-save")
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in proc.stdout:
        if line.startswith("eval step 60/600"):
            break
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and messages(err)[-1] == "terminated", err[-2000:]
    assert "Traceback" not in err and "already exists" not in err, err[-2000:]
    steps = saved_steps(tmp_path / "run")
    assert steps and steps[0] == 60, steps
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if "tmp" in p.name]
    assert train(parse_cli(args + ["--max-steps", str(steps[-1] + 1)]),
                 progress=False).steps == steps[-1] + 1


def test_a_second_run_on_a_checkpoint_directory_in_use_stops_at_once(tmp_path, data_dir,
                                                                     capsys):
    """(Each in-process `train` releases its lock: other tests train twice on one run dir.)"""
    checkpoints = tmp_path / "run" / "checkpoints"
    with preflight.run_lock(str(checkpoints)):  # the other run
        assert train_cli.main(tiny_args(tmp_path / "run", data_dir, "--max-steps", "1")) == 1
        assert [p.name for p in checkpoints.iterdir()] == [".lock"]  # the holder's, kept
    err = messages(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("error: ")
    assert f"is in use by another run (pid {os.getpid()} on " in err[0]
    assert not (tmp_path / "run").exists()  # the other run saved nothing: it left nothing
