"""Launcher templates: the dry run prints what runs, and what runs reaches train.py intact
(quoting of paths with spaces and quotes), from `run` and from the generated script."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from sweeps import runner
from sweeps.__main__ import main
from sweeps.catalog import select
from sweeps.launch import bash_launch_line, launch_argv
from sweeps.runner import Settings, plan, run_all
from sweeps.script import script

GCLOUD = ('gcloud compute tpus tpu-vm ssh my-pod --zone us-central2-b --worker=all '
          '--command "cd ~/trm && {cmd}"')
SRUN = "srun --nodes=2 --ntasks-per-node=1"

RECORDING_TRAIN = """\
import json, os, sys
args = sys.argv[1:]
run_dir = args[args.index("--run-dir") + 1]
os.makedirs(run_dir, exist_ok=True)
with open(os.path.join(run_dir, "argv.json"), "w") as f:
    json.dump(args, f)
"""


def test_placeholder_gets_the_command_as_one_quoted_string():
    command = ["python", "train.py", "--run-dir", "runs/it's here", "--tracking.tags", "a b"]
    argv = launch_argv(GCLOUD, command)
    assert argv[:-1] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-pod", "--zone",
                         "us-central2-b", "--worker=all", "--command"]
    cd, _, line = argv[-1].partition(" && ")
    assert cd == "cd ~/trm" and shlex.split(line) == command


def test_template_without_placeholder_is_a_prefix():
    assert launch_argv(SRUN, ["python", "train.py", "x y"]) == [
        "srun", "--nodes=2", "--ntasks-per-node=1", "python", "train.py", "x y"]
    assert launch_argv(None, ["python", "train.py"]) == ["python", "train.py"]


@pytest.mark.parametrize("template", ['ssh host "{cmd}', "", "{cmd} --x"])
def test_bad_templates_are_one_line_errors(template, capsys):
    with pytest.raises(ValueError, match="launcher template"):
        launch_argv(template, ["train.py"])
    assert main(["run", "exp05_a", "--dry-run", "--launcher", template]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: launcher template") and err.count("\n") == 1


def test_dry_run_prints_exactly_the_launched_argv(tmp_path, capsys):
    root = tmp_path / "my runs" / "it's"
    assert main(["run", "exp05_a", "exp05_b", "--dry-run", "--root", str(root),
                 "--launcher", GCLOUD]) == 0
    lines = capsys.readouterr().out.splitlines()
    runs = plan(select(["exp05_a", "exp05_b"]), Settings(root=str(root), launcher=GCLOUD))
    assert len(lines) == 2
    for line, run in zip(lines, runs, strict=True):
        name, to, run_, shown = line.split(None, 3)
        assert (name, to, run_) == (run.name, "to", "run")
        launched = shlex.split(shown)
        assert launched == run.launch
        assert shlex.split(launched[-1].partition(" && ")[2]) == [
            "python", "train.py", *run.argv]
        assert "--mesh.distributed" in run.argv and str(root / run.name) in run.argv
    assert main(["script", "exp05_a", "--dry-run", "--root", str(root),
                 "--launcher", SRUN]) == 0
    out = capsys.readouterr().out.strip()
    assert shlex.split(out) == [*shlex.split(SRUN), "python", "train.py", *runs[0].argv]


def test_runs_without_launcher_are_unchanged(tmp_path):
    run = plan(select("exp05_a"), Settings(root=str(tmp_path)))[0]
    assert run.launch == [sys.executable, str(runner.TRAIN_PY), *run.argv]
    assert "--mesh.distributed" not in run.argv and run.shown == f"python {run.command}"
    assert bash_launch_line(None) == '"$PYTHON" train.py "$@"'


@pytest.mark.parametrize("template", ['bash -c "cd . && {cmd}"', "env TRM_LAUNCHED=1"])
def test_launched_runs_reach_train_py_intact(template, tmp_path, monkeypatch):
    """`run` and the generated script, through a real launcher, pass train.py the planned
    arguments word for word (root with a space and a quote)."""
    (tmp_path / "train.py").write_text(RECORDING_TRAIN)
    monkeypatch.chdir(tmp_path)
    path = f"{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin"
    root = tmp_path / "my runs" / "it's"
    runs = plan(select(["exp05_a", "exp05_b"]),
                Settings(root=str(root), track=False, launcher=template))
    outcomes = run_all(runs, poll_s=0.05, say=lambda _: None, env={"PATH": path})
    assert [o.status for o in outcomes] == ["done", "done"]
    for r in runs:
        assert json.loads((r.run_dir / "argv.json").read_text()) == r.argv
        (r.run_dir / "argv.json").unlink()
        (r.run_dir / runner.MARKER).unlink()
    (tmp_path / "study.sh").write_text(script(runs, "test"))
    done = subprocess.run(["bash", "study.sh"], cwd=tmp_path, env={"PATH": path},
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    for r in runs:
        assert json.loads((r.run_dir / "argv.json").read_text()) == r.argv
        assert not r.stale()
