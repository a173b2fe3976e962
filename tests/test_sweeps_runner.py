"""The runner and the generated script, with a fake train.py (one run fails), and the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sweeps import runner
from sweeps.__main__ import main
from sweeps.catalog import select
from sweeps.runner import Settings, plan, report, run_all
from sweeps.script import script

FAKE_TRAIN = """\
import sys, time
args = sys.argv[1:]
run_dir = args[args.index("--run-dir") + 1]
print("training", args[0], run_dir)
if run_dir.endswith("exp05_b"):
    print("error: boom", file=sys.stderr)
    sys.exit(3)
time.sleep(0.1)
"""


@pytest.fixture
def fake_train(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "train.py"
    path.write_text(FAKE_TRAIN)
    monkeypatch.setattr(runner, "TRAIN_PY", path)
    return path


def _runs(tmp_path: Path) -> list[runner.PlannedRun]:
    return plan(select("exp05"), Settings(root=str(tmp_path / "runs"), track=False))


def test_run_all_keeps_going_after_a_failure_and_skips_finished_runs(tmp_path, fake_train):
    runs = _runs(tmp_path)
    assert [r.name for r in runs] == ["exp05_a", "exp05_b", "exp05_c", "baseline", "exp05_e",
                                      "exp05_f"]
    said: list[str] = []
    outcomes = run_all(runs, jobs=2, poll_s=0.05, say=said.append)
    status = {o.run.name: o.status for o in outcomes}
    assert status == {"exp05_a": "done", "exp05_b": "failed", "exp05_c": "done",
                      "baseline": "done", "exp05_e": "done", "exp05_f": "done"}
    assert not (tmp_path / "runs/exp05_b/DONE").exists()
    assert (tmp_path / "runs/exp05_a/DONE").read_text().strip() == runs[0].command
    log = (tmp_path / "runs/exp05_b/train.log").read_text()
    assert runs[1].command in log and "training sudoku-extreme" in log and "boom" in log
    summary = report(outcomes)
    assert summary.startswith("summary: ") and "5 done" in summary and "1 failed" in summary
    assert "failed exp05_b: exit 3: error: boom" in summary

    again = run_all(runs, jobs=1, poll_s=0.05, say=said.append)
    assert [o.status for o in again].count("skipped") == 5
    assert [o.run.name for o in again if o.status == "failed"] == ["exp05_b"]
    assert "=== " in (tmp_path / "runs/exp05_b/train.log").read_text().split("boom", 1)[1]

    (tmp_path / "runs/exp05_a/DONE").write_text("train.py something else\n")
    assert runs[0].stale()
    said.clear()
    assert run_all(runs[:1], poll_s=0.05, say=said.append)[0].status == "stale"
    assert "finished with another command line" in said[0] and "--force reruns it" in said[0]
    (tmp_path / "runs/exp05_a/checkpoints/16").mkdir(parents=True)  # another run's steps
    forced = run_all(runs[:1], force=True, poll_s=0.05, say=said.append)
    assert forced[0].status == "done" and not runs[0].stale()
    # it trained from scratch (it resumed the other run's checkpoints); the old run is kept
    assert f"moved to {tmp_path / 'runs/exp05_a.stale-1'}; trains from scratch" in said[-3]
    assert (tmp_path / "runs/exp05_a.stale-1/checkpoints/16").is_dir()
    assert not (tmp_path / "runs/exp05_a/checkpoints").exists()
    # tracked elsewhere or not at all, or through a launcher: the same run, not stale
    for other in (Settings(root=str(tmp_path / "runs"), track=True, repo=str(tmp_path / "aim")),
                  Settings(root=str(tmp_path / "runs"), track=False, launcher="srun")):
        (tmp_path / "runs/exp05_a/DONE").write_text(
            plan(select("exp05_a"), other)[0].command + "\n")
        assert not runs[0].stale()
    lr = plan(select("exp05_a"), Settings(root=str(tmp_path / "runs"), track=False))[0]
    (tmp_path / "runs/exp05_a/DONE").write_text(lr.command + " --optim.lr 0.5\n")
    assert runs[0].stale()
    assert runs[0].stale_changes() == [f"--optim.lr 0.5 -> {runs[0].config.optim.lr!r}"]
    said.clear()
    run_all(runs[:1], poll_s=0.05, say=said.append)  # the skip names what differs
    assert f"another command line (--optim.lr 0.5 -> {runs[0].config.optim.lr!r}), skipped" \
        in said[0]


def test_generated_script_runs_and_reports_failures(tmp_path, fake_train):
    runs = _runs(tmp_path)
    text = script(runs, "python -m sweeps script exp05")
    assert [ln.split()[1] for ln in text.splitlines() if ln.startswith("run ")] == [
        r.name for r in runs]
    assert "also stands for exp05_d" in text
    path = tmp_path / "study.sh"
    path.write_text(text)
    subprocess.run(["bash", "-n", str(path)], check=True)
    env = {"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}
    done = subprocess.run(["bash", str(path)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 1 and "failed: exp05_b" in done.stderr
    assert (tmp_path / "runs/exp05_f/DONE").is_file() and not runs[-1].stale()
    assert "training" in (tmp_path / "runs/exp05_a/train.log").read_text()
    # finished runs are not trained again
    (tmp_path / "runs/exp05_a/train.log").unlink()
    subprocess.run(["bash", str(path)], cwd=tmp_path, env=env, capture_output=True, check=False)
    assert not (tmp_path / "runs/exp05_a/train.log").exists()


def test_data_note_names_the_data_sets_to_build(tmp_path):
    text = script(plan(select("exp04a_100"), Settings()), "x")
    assert "--subsample-size 100 --num-aug 1000 --out data/sudoku-extreme-100-aug-1000" in text


def test_cli(tmp_path, capsys, fake_train):
    assert main(["list", "exp05", "contrib"]) == 0
    out = capsys.readouterr().out
    assert "exp05_d" in out and "(= baseline)" in out
    assert "10 entries in 3 groups, 8 distinct runs" in out
    assert main(["show", "exp07a"]) == 0
    out = capsys.readouterr().out
    assert "model.forward_dtype: 'bfloat16' -> 'float32'" in out
    assert "--model.forward-dtype float32" in out
    assert main(["show", "exp99"]) == 2
    assert "no catalog entry 'exp99'" in capsys.readouterr().err
    assert main(["list", "nothing"]) == 2
    target = tmp_path / "s.sh"
    assert main(["script", "exp05_[ab]", "--scale", "cpu", "-o", str(target)]) == 0
    assert "--scale cpu" in target.read_text().splitlines()[1]
    assert main(["run", "exp05_a", "--dry-run", "--root", str(tmp_path / "r")]) == 0
    assert "to run" in capsys.readouterr().out
    for step in ("7", "12"):  # an interrupted run (orbax's step directories)
        (tmp_path / "r/exp05_a/checkpoints" / step).mkdir(parents=True)
    assert main(["run", "exp05_a", "--dry-run", "--root", str(tmp_path / "r")]) == 0
    assert "resumes at step 12" in capsys.readouterr().out
    for flag in ("--jobs", "--steps"):  # also with --dry-run, which runs nothing
        assert main(["run", "exp05_a", "--dry-run", "--scale", "cpu", flag, "0"]) == 2
        assert f"argument {flag}: must be >= 1, got 0" in capsys.readouterr().err
    assert main(["run", "exp05_a", "--dry-run", "--steps", "5"]) == 2  # was ignored
    assert "--steps sets the steps of a CPU-scale run" in capsys.readouterr().err
    assert main(["run", "", "--dry-run"]) == 2  # an unset $EXP: not the whole catalogue
    assert "no experiment pattern given" in capsys.readouterr().err
    assert main(["run", "exp05_b", "--root", str(tmp_path / "r"), "--no-track"]) == 1
    assert "1 failed" in capsys.readouterr().out


def test_unwritable_places_are_one_line_before_any_work(tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    assert main(["run", "exp05_a", "--scale", "cpu", "--root", "/proc/no_such_root"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: cannot write /proc/no_such_root: No such file or directory: /proc/no_such_root")
    for dry_run in ([], ["--dry-run"]):  # a dry run said "to run" where the run would stop
        assert main(["run", "exp05_a", "--root", str(tmp_path / "a_file"), *dry_run]) == 2
        assert capsys.readouterr().err.strip().endswith(f"{tmp_path / 'a_file'} is a file")
    assert main(["run", "exp05_a", "--dry-run", "--root", str(tmp_path / "new/root")]) == 0
    assert main(["analyze", "exp05", "--scale", "cpu", "--repo", str(tmp_path / "aim"),
                 "--out", str(tmp_path / "a_file")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: cannot write {tmp_path / 'a_file'}: {tmp_path / 'a_file'} is a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_output_piped_into_a_reader_that_exits_ends_quietly():
    """`python -m sweeps list | head -1`: no 'Broken pipe' error, SIGPIPE's status (141)."""
    listing = subprocess.Popen([sys.executable, "-m", "sweeps", "list"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1])
    listing.stdout.close()  # the reader has exited before the first line is written
    assert listing.wait(timeout=60) == 141
    assert listing.stderr.read() == b""


SLEEPING_TRAIN = """\
import os, sys, time
args = sys.argv[1:]
run_dir = args[args.index("--run-dir") + 1]
os.makedirs(run_dir, exist_ok=True)
open(os.path.join(run_dir, "pid"), "w").write(str(os.getpid()))
time.sleep(120)
"""

RUNNER = """\
import sys
from pathlib import Path
from sweeps import runner
from sweeps.catalog import select
runner.TRAIN_PY = Path(sys.argv[1])
runner.run_all(runner.plan(select("exp05_a"), runner.Settings(root=sys.argv[2], track=False)),
               poll_s=0.05, say=print)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG)")
def test_a_killed_runner_takes_its_training_runs_with_it(tmp_path):
    """`kill -9` of `python -m sweeps run` (no clean-up of its own can run): its train.py
    children get SIGTERM, instead of training on unwatched and holding their run directories."""
    import os
    import signal
    import time

    fake = tmp_path / "train.py"
    fake.write_text(SLEEPING_TRAIN)
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(fake), str(tmp_path / "runs")],
                            cwd=Path(__file__).resolve().parents[1], stderr=subprocess.PIPE,
                            text=True)
    pid_file = tmp_path / "runs/exp05_a/pid"
    for _ in range(600):
        if pid_file.is_file() and pid_file.read_text():
            break
        time.sleep(0.05)
    child = int(pid_file.read_text())
    proc.kill()
    assert "fork" not in proc.communicate()[1]  # JAX's warning about forking its process
    for _ in range(200):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the training run outlived its runner")


def test_a_failure_after_an_unfinished_progress_bar_line_reads_as_its_error(tmp_path):
    log = tmp_path / "train.log"
    log.write_bytes(b"=== start\n 50%|#####     | 8/16 [00:30<00:30, 3.6s/step]\r 56%|#####6    "
                    b"| 9/16 [00:35<00:25, 3.66s/step]error: runs/x/checkpoints is in use by "
                    b"another run (pid 8033 on vm)\n")
    assert runner._last_line(log) == ("error: runs/x/checkpoints is in use by another run (pid "
                                      "8033 on vm)")


def test_a_run_killed_by_a_signal_says_so(tmp_path, monkeypatch):
    """A run killed (kill -9, the OOM killer) was summarised with the progress-bar fragment
    its log ended on."""
    fake = tmp_path / "train.py"
    fake.write_text("import os, signal, sys\nsys.stderr.write(' 5%|#  | 1/20 [00:01<')\n"
                    "sys.stderr.flush()\nos.kill(os.getpid(), signal.SIGKILL)\n")
    monkeypatch.setattr(runner, "TRAIN_PY", fake)
    said: list[str] = []
    runs = plan(select("exp05_a"), Settings(root=str(tmp_path / "runs"), track=False))
    [outcome] = run_all(runs, jobs=1, poll_s=0.05, say=said.append)
    assert (outcome.status, outcome.detail) == ("failed", "killed by SIGKILL")
    assert "killed by SIGKILL; log " in said[-1]


def test_a_blank_pattern_selects_nothing():
    """An unset shell variable ("") selected the whole catalogue (78 full-size runs)."""
    for blank in ("", ",", " ", ["", " "]):
        with pytest.raises(ValueError, match="no experiment pattern given"):
            select(blank)


@pytest.mark.parametrize("module, argv, message", [
    ("sweeps", ["analyze", "--target", "0"],
     ("error: python -m sweeps analyze: argument --target: an exact accuracy in (0, 1], got 0 "
     "(see python -m sweeps analyze --help)")),
    ("data", ["build", "arc", "--arc-dir", "x"],
     ("error: python -m data build arc: the following arguments are required: --subsets, "
     "--test-subset, --out (see python -m data build arc --help)")),
    ("trm.parity", [], ("error: python -m trm.parity: the following arguments are required: "
     "files (see python -m trm.parity --help)")),
])
def test_usage_errors_are_one_line(module, argv, message):
    """argparse prints its usage block before the error; our commands print one line."""
    done = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], check=False, timeout=120)
    assert (done.returncode, done.stderr) == (2, message + "\n")
