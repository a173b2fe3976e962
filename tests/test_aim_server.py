"""Slow: a real Aim tracking server (`aim server` on 127.0.0.1, its own process group, stopped at
the end) receives a two-process training run (one Aim run: only process 0 logs), the
evaluation of its checkpoint added to that run, and a sweep run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_multihost import ROOT, _free_port, two_processes

import train as train_cli

aim = pytest.importorskip("aim")
AIM = str(Path(sys.executable).parent / "aim")


def _wait_for_port(port: int, proc: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"aim server exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"aim server not listening on 127.0.0.1:{port} after {seconds} s")


@pytest.fixture
def aim_server(tmp_path):
    """(aim://127.0.0.1:PORT, the server's repository directory)."""
    repo = tmp_path / "server-repo"
    repo.mkdir()
    subprocess.run([AIM, "init", "--repo", str(repo)], check=True, capture_output=True,
                   timeout=120)
    port = _free_port()
    log = open(tmp_path / "aim-server.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([AIM, "server", "--repo", str(repo), "--host", "127.0.0.1",
                             "--port", str(port), "-y"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        _wait_for_port(port, proc, 90)
        yield f"aim://127.0.0.1:{port}", repo
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _runs(repo: Path) -> dict[str, dict]:
    """run hash -> {"name", "experiment", "metrics": {(name, context items): {step: value}}}."""
    from aim.sdk.index_manager import RepoIndexManager

    subprocess.run([AIM, "storage", "--repo", str(repo), "reindex", "-y"], check=True,
                   capture_output=True, timeout=120)
    r = aim.Repo.from_path(str(repo))
    manager = RepoIndexManager.get_index_manager(r)
    found = {}
    for run in r.iter_runs():
        manager.index(run.hash)
        metrics = {}
        for m in run.metrics():
            steps, (values, _, _) = m.data.items_list()
            key = (m.name, tuple(sorted(m.context.to_dict().items())))
            metrics[key] = dict(zip(map(int, steps), values, strict=True))
        found[run.hash] = {"name": run.name, "experiment": run.experiment, "metrics": metrics}
    return found


@pytest.mark.slow
def test_training_evaluation_and_sweeps_log_to_an_aim_server(aim_server, tmp_path):
    url, repo = aim_server
    data = tmp_path / "data"  # both processes generate it at once (ensure_tiny_dataset)
    run_dir = tmp_path / "run"
    two_processes("train.py", [
        "sudoku-tiny", "--tracking.repo", url, "--tracking.run-name", "pod run",
        "--run-dir", str(run_dir), "--data.data-dir", str(data), "--data.num-train", "32",
        "--data.num-test", "8", "--model.hidden-size", "32",
        "--model.num-heads", "2", "--model.L-cycles", "1", "--model.halt-max-steps", "2",
        "--optim.global-batch-size", "8", "--optim.epochs", "1", "--eval.eval-interval", "1",
        "--max-steps", "3"])
    runs = _runs(repo)
    assert len(runs) == 1  # process 1 logged nothing
    (run_hash, train), = runs.items()
    assert train["name"] == "pod run" and train["experiment"] == "sudoku-tiny"
    assert set(train["metrics"][("lm_loss", (("subset", "train"),))]) == {1, 2, 3}
    assert (("exact_accuracy", (("set", "test"), ("subset", "eval"))) in train["metrics"])

    evaluated = subprocess.run(
        [sys.executable, "evaluate.py", "--checkpoint-dir", str(run_dir / "checkpoints"),
         "--aim-repo", url, "--aim-run", run_hash, "--no-progress",
         "--out", str(tmp_path / "eval.json")], cwd=ROOT, capture_output=True, text=True,
        timeout=600, env=dict(os.environ, PYTHONPATH=str(ROOT)), check=False)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    metrics = _runs(repo)[run_hash]["metrics"]
    context = (("set", "test"), ("source", "evaluate"), ("subset", "eval"), ("weights", "ema"))
    assert set(metrics[("exact_accuracy", context)]) == {3}

    swept = subprocess.run(
        [sys.executable, "-m", "sweeps", "run", "exp05_a", "--scale", "cpu", "--steps", "2",
         "--track", "--repo", url, "--root", str(tmp_path / "study")], cwd=ROOT,
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, PYTHONPATH=str(ROOT)), check=False)
    assert swept.returncode == 0, swept.stdout[-2000:] + swept.stderr[-2000:]
    assert not (ROOT / "aim:").exists() and not Path("aim:").exists()
    runs = _runs(repo)
    assert sorted(r["name"] for r in runs.values()) == ["exp05_a", "pod run"]
    sweep = next(r for r in runs.values() if r["name"] == "exp05_a")
    assert sweep["experiment"] == "trm-study-cpu"
    assert set(sweep["metrics"][("lm_loss", (("subset", "train"),))]) == {1, 2}


def test_an_unreachable_server_is_a_one_line_error(tmp_path, capsys):
    from trm.tracking import open_aim_run

    port = _free_port()  # nothing listens there
    with pytest.raises(ValueError, match=f"cannot reach the Aim server aim://127.0.0.1:{port}"):
        open_aim_run(f"aim://127.0.0.1:{port}", experiment="x")
    # train.py finds out before its run directory is created
    run = tmp_path / "run"
    assert train_cli.main(["sudoku-tiny", "--run-dir", str(run), "--data.data-dir",
                           str(tmp_path / "data"), "--tracking.repo",
                           f"aim://127.0.0.1:{port}"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: cannot reach the Aim server"), err
    assert not run.exists()
