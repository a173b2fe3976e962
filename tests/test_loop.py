"""The training loop end to end on a tiny generated Sudoku set: resume, SIGKILL, NaN, flags."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from helpers import damage_step, unwritable

import train as train_cli
from trm import loop, preflight
from trm.loop import train
from trm.run_config import MeshConfig, parse_cli

ROOT = Path(__file__).resolve().parents[1]


def tiny_args(tmp: Path, data: Path, *extra: str) -> list[str]:
    return ["sudoku-tiny", "--no-track", "--run-dir", str(tmp), "--data.data-dir", str(data),
            "--data.num-train", "48", "--data.num-test", "16", "--model.hidden-size", "32",
            "--model.num-heads", "2", "--model.L-cycles", "1", "--model.halt-max-steps", "3",
            "--model.halt-exploration-prob", "0.5", "--optim.global-batch-size", "8",
            "--optim.lr-warmup-steps", "2", "--optim.epochs", "2", "--eval.eval-interval", "1",
            "--checkpoint.no-async-save", *extra]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data") / "sudoku"


def leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves((state.model, state.ema, state.opt_state,
                                                    state.carry))]


def test_resume_is_bitwise_exact(tmp_path, data_dir):
    full = train(parse_cli(tiny_args(tmp_path / "full", data_dir, "--max-steps", "8")),
                 progress=False)
    part = tiny_args(tmp_path / "part", data_dir)
    first = train(parse_cli(part + ["--max-steps", "5"]), progress=False)
    assert first.steps == 5
    resumed = train(parse_cli(part + ["--max-steps", "8"]), progress=False)
    assert resumed.steps == 8 and len(resumed.train_metrics) == 3
    for a, b in zip(leaves(full.state), leaves(resumed.state)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(full.train_metrics[5:], resumed.train_metrics):
        assert {k: v for k, v in a.items() if k != "examples_per_s"} == {
            k: v for k, v in b.items() if k != "examples_per_s"}
    assert full.eval_metrics["test"]["count"] == 16


def test_interval_evaluations_skip_the_last_partial_interval():
    """625 steps, every 78 (5 of 40 epochs): 7 interval evaluations and the final one, not an
    evaluation at 624 and again at 625; an interval that divides the schedule ends on it."""
    assert [s for s in range(1, 626) if loop.evaluates_at(s, 78, 625)] == [
        78, 156, 234, 312, 390, 468, 546]
    assert [s for s in range(1, 641) if loop.evaluates_at(s, 80, 640)][-1] == 560
    assert not any(loop.evaluates_at(s, None, 625) for s in range(1, 626))


def test_eval_lines_and_only_measured_train_metrics(tmp_path, data_dir, capsys):
    """One terminal line per evaluation; Aim gets accuracy, exact accuracy, q_halt accuracy
    and steps only on steps where rows halted (none can before step 3 = halt_max_steps)."""
    aim = pytest.importorskip("aim")
    from aim.sdk.index_manager import RepoIndexManager

    repo = tmp_path / "aim"
    args = tiny_args(tmp_path / "run", data_dir, "--max-steps", "12", "--tracking.repo",
                     str(repo))
    assert train_cli.main([a for a in args if a != "--no-track"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("eval step")]
    assert [x.split(" test:")[0] for x in lines] == ["eval step 6/12 epoch 1.0",
                                                     "eval step 12/12 epoch 2.0"]
    assert all(re.search(r"exact [\d.]+ token [\d.]+ halting 3.00 steps \(exact [\d.]+\) "
                         r"\[\d+:\d\d\]$", x) for x in lines), lines

    found = aim.Repo.from_path(str(repo))
    (run_hash,) = found.list_all_runs()
    RepoIndexManager.get_index_manager(found).index(run_hash)
    run = found.get_run(run_hash)
    assert (run["start_step"], run["last_step"]) == (0, 12)  # for sweeps' times and "unfinished"
    train_steps = {}
    for metric in found.query_metrics("metric.context.subset == 'train'").iter():
        steps, (values, _, _) = metric.data.items_list()
        train_steps[metric.name] = dict(zip(steps, values))
    assert sorted(train_steps["lm_loss"]) == list(range(1, 13))
    halted = [s for s, n in train_steps["count"].items() if n > 0]
    assert 1 not in halted and 2 not in halted and 3 in halted
    for name in ("accuracy", "exact_accuracy", "q_halt_accuracy", "steps"):
        assert sorted(train_steps[name]) == halted, name


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory, data_dir):
    """A run directory with checkpoints at steps 1 and 2 (copy it before changing it)."""
    run = tmp_path_factory.mktemp("two_steps") / "run"
    train(parse_cli(two_step_args(run, data_dir, "--max-steps", "2")), progress=False)
    return run


def two_step_args(run: Path, data_dir: Path, *extra: str) -> list[str]:
    """Saves every step, evaluates nothing (cheap)."""
    return tiny_args(run, data_dir, "--checkpoint.every-n-steps", "1", "--eval.eval-sets",
                     *extra)


def copy_run(run: Path, tmp_path: Path, data_dir: Path, *extra: str) -> list[str]:
    shutil.copytree(run, tmp_path / "run")
    return two_step_args(tmp_path / "run", data_dir, *extra)


def messages(err: str) -> list[str]:
    """stderr lines without the progress bar's."""
    return [line for line in err.replace("\r", "\n").splitlines()
            if line.strip() and "step/s" not in line and "%|" not in line]


def saved_steps(run: Path) -> list[int]:
    return sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())


def test_checkpoint_of_another_model_is_refused(tmp_path, data_dir, two_step_run, capsys):
    args = copy_run(two_step_run, tmp_path, data_dir)
    code = train_cli.main(args + ["--max-steps", "3", "--model.hidden-size", "64"])
    err = capsys.readouterr().err
    assert code == 2 and "--model.hidden-size stored 32, requested 64" in err
    for flags, setting in ((["--optim.global-batch-size", "16"], "global-batch-size stored 8"),
                           (["--optim.optimizer", "adamw"], "optimizer stored 'adam_atan2'"),
                           (["--optim.no-ema"], "--optim.ema stored True, requested False"),
                           (["--data.num-workers", "1"], "--data.num-workers stored 0, requested 1")):
        assert train_cli.main(args + ["--max-steps", "3", *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and setting in err[0]


def test_blow_up_leaves_only_finite_checkpoints_and_resumes_from_them(tmp_path, data_dir,
                                                                     two_step_run, capsys):
    """Issue 10 items 1 and 7: the state after step 3 overflows (lr and weight decay 1e20),
    saved every step; it is never written, and a rerun continues from step 2."""
    args = copy_run(two_step_run, tmp_path, data_dir)
    code = train_cli.main(args + ["--max-steps", "6", "--optim.lr", "1e20",
                                  "--optim.weight-decay", "1e20"])
    err = messages(capsys.readouterr().err)
    changed = [line for line in err if line.startswith("warning: resuming with a setting")]
    err = [line for line in err if line not in changed]
    assert len(changed) == 2  # --optim.lr and --optim.weight-decay
    assert code == 1 and len(err) == 1 and err[0].startswith("stopped: non-finite weights")
    assert "after step 3" in err[0] and "the last good checkpoint, step 2" in err[0]
    assert saved_steps(tmp_path / "run") == [1, 2]
    resumed = train(parse_cli(args + ["--max-steps", "3"]), progress=False)
    assert resumed.steps == 3 and saved_steps(tmp_path / "run") == [2, 3]
    assert all(np.isfinite(x).all() for x in leaves(resumed.state))


def test_resume_at_or_past_the_last_step(tmp_path, data_dir, two_step_run, capsys):
    """A resume whose schedule ends before the saved step is an error (it used to exit 0
    having done nothing); one that ends at it says there is nothing to train. Neither warns
    about changed settings (the run does not go on with them)."""
    args = copy_run(two_step_run, tmp_path, data_dir)
    assert train_cli.main(args + ["--max-steps", "1", "--optim.lr", "0.00031"]) == 2
    err = messages(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("error:") and "step 2, past" in err[0]
    assert "last step 1 (--max-steps 1)" in err[0]

    def no_tracker(*args, **kwargs):
        raise AssertionError("a run with nothing to train opened a tracking run")

    used = []

    def recorded(cfg, **kwargs):
        used.append(cfg.data.data_dir)
        return preflight.prepare_data(cfg, **kwargs)

    relative = [data_dir.name if a == str(data_dir) else a for a in args]
    with pytest.MonkeyPatch.context() as m:
        m.setattr(loop.Tracker, "open", no_tracker)
        m.setattr(loop, "prepare_data", recorded)
        m.chdir(data_dir.parent)
        assert train_cli.main(relative + ["--max-steps", "2", "--seed", "7"]) == 0
    assert used == [str(data_dir)]  # what the checkpoints record: absolute
    err = messages(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("notice:") and "nothing to train" in err[0]
    assert saved_steps(tmp_path / "run") == [1, 2]
    assert train_cli.main(args + ["--max-steps", "3", "--optim.lr", "0.00031", "--seed", "7"]) == 0
    out, err = capsys.readouterr()
    assert any(line.startswith("resuming: ") and line.endswith(" at step 2 of 3")
               for line in out.splitlines())
    changes = [line for line in messages(err) if line.startswith("warning: resuming with")]
    assert len(changes) == 2, err
    assert "--seed stored 0, requested 7" in changes[0]
    assert "--optim.lr stored" in changes[1] and "requested 0.00031" in changes[1]
    # remat (how the gradient is computed) may change freely; the activation dtype (the saved
    # carry's) and an architecture field refuse, naming the setting
    again = args + ["--optim.lr", "0.00031", "--seed", "7"]
    assert train_cli.main(again + ["--max-steps", "4", "--model.remat", "True"]) == 0
    assert messages(capsys.readouterr().err) == []
    assert saved_steps(tmp_path / "run")[-1] == 4
    assert train_cli.main(again + ["--max-steps", "5", "--model.forward-dtype", "bfloat16"]) != 0
    assert "--model.forward-dtype stored 'float32', requested 'bfloat16'" in \
        capsys.readouterr().err
    assert train_cli.main(again + ["--max-steps", "5", "--model.expansion", "3"]) != 0
    assert "--model.expansion stored 2.0, requested 3.0" in capsys.readouterr().err
    # a fresh run asked for on saved steps stops before training (not at its first save)
    assert train_cli.main(again + ["--max-steps", "5", "--checkpoint.no-resume"]) == 2
    err = messages(capsys.readouterr().err)
    assert len(err) == 1 and "holds checkpoints (steps 3, 4)" in err[0], err
    assert saved_steps(tmp_path / "run") == [3, 4]


def test_a_batch_larger_than_the_whole_schedule_is_refused(tmp_path, data_dir, two_step_run,
                                                           capsys):
    """2 epochs of 48 puzzles (their augmented copies included) make no step of 100000: an
    error before anything is written, not a finished run of 0 steps."""
    args = tiny_args(tmp_path / "run", data_dir, "--optim.global-batch-size", "100000")
    assert train_cli.main(args) == 2
    err = messages(capsys.readouterr().err)
    assert len(err) == 1 and "make no step of --optim.global-batch-size 100000" in err[0], err
    assert not (tmp_path / "run").exists()


def test_the_recorded_data_dir_is_absolute(tmp_path, monkeypatch):
    """Checkpoints record --data.data-dir; evaluate.py may run from another directory (a URL
    is kept as given)."""
    monkeypatch.chdir(tmp_path)
    cfg = preflight.with_absolute_data_dir(parse_cli(["sudoku-tiny", "--data.data-dir", "d"]))
    assert cfg.data.data_dir == str(tmp_path / "d")
    remote = parse_cli(["sudoku-extreme", "--data.data-dir", "gs://bucket/d"])
    assert preflight.with_absolute_data_dir(remote) is remote


@pytest.mark.slow  # the fallback itself: test_checkpoint.py; this is the loop end to end
def test_resume_skips_a_damaged_latest_checkpoint(tmp_path, data_dir, two_step_run, capsys):
    args = copy_run(two_step_run, tmp_path, data_dir, "--max-steps", "3")
    damage_step(tmp_path / "run" / "checkpoints" / "2", "truncate")
    assert train_cli.main(args) == 0
    err = messages(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("notice: checkpoint step 2 is unusable")
    assert "using step 1" in err[0] and "set aside" in err[0]
    assert saved_steps(tmp_path / "run") == [2, 3]  # 1 + two new steps, keep_last 2
    assert (tmp_path / "run" / "checkpoints" / "unusable" / "2").is_dir()
    for step in (2, 3):
        damage_step(tmp_path / "run" / "checkpoints" / str(step), "delete_state")
    assert train_cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no usable checkpoint in")


def test_a_run_stopped_by_a_missing_data_set_leaves_no_directories(tmp_path, capsys):
    run_dir = tmp_path / "runs" / "a"
    assert train_cli.main(["sudoku-extreme", "--no-track", "--data.data-dir",
                           str(tmp_path / "nodata"), "--run-dir", str(run_dir)]) == 2
    assert "not a built data set" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_unwritable_run_dir_is_one_error_line(tmp_path, data_dir, two_step_run, capsys):
    args = copy_run(two_step_run, tmp_path, data_dir, "--max-steps", "4")
    (tmp_path / "ro").mkdir()
    with unwritable(tmp_path / "run" / "checkpoints"), unwritable(tmp_path / "ro"):
        start = time.perf_counter()
        new_run = tiny_args(tmp_path / "ro" / "run", data_dir)
        for argv in (new_run, args):  # a new run, a resume
            assert train_cli.main(argv) == 1
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith("error: cannot write to")
        assert time.perf_counter() - start < 30
    assert not (tmp_path / "ro" / "run").exists()


@pytest.mark.slow  # the failing save itself: test_checkpoint.py; this is the loop end to end
def test_save_failing_mid_run_is_one_error_line(tmp_path, data_dir, two_step_run, capsys,
                                                monkeypatch):
    """Writes that start failing after the start-up check: the next save stops the run."""
    args = copy_run(two_step_run, tmp_path, data_dir, "--max-steps", "4")
    monkeypatch.setattr(loop, "check_writable", lambda _: None)
    with unwritable(tmp_path / "run" / "checkpoints"):
        assert train_cli.main(args) == 1
    err = messages(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("error: writing checkpoint step 3 to")
    assert saved_steps(tmp_path / "run") == [1, 2]


@pytest.mark.parametrize("flags,message", [
    (["--optim.global-batch-size", "0"], "--optim.global-batch-size"),
    (["--model.hidden-size", "30", "--model.num-heads", "4"], "--model.num-heads 4 must divide"),
    (["--eval.eval-interval", "3"], "--eval.eval-interval"),
    (["--model.num-heads", "0"], "--model.num-heads"),
    (["--mesh.data", "16", "--optim.global-batch-size", "16"], "--mesh.data 16: 8 device(s)"),
    (["--optim.global-batch-size", "12"], "--optim.global-batch-size 12 is not a multiple"),
])
def test_bad_flags_give_one_line_errors(tmp_path, data_dir, capsys, flags, message):
    assert train_cli.main(tiny_args(tmp_path, data_dir, *flags)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]
    assert not (tmp_path / "checkpoints").exists()


_SPLIT = """
import os, sys, jax
from trm.preflight import split_cpu
from trm.run_config import MeshConfig
print(split_cpu(MeshConfig(cpu_devices=int(sys.argv[1]), data=int(sys.argv[2])),
                *map(int, sys.argv[3:])),
      jax.device_count(), len(os.sched_getaffinity(0)))
"""


def _split(cpu_devices: int, *batches: int, data: int = -1) -> tuple[int | None, int, int]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run([sys.executable, "-c", _SPLIT, str(cpu_devices), str(data),
                          *map(str, batches)],
                         env=env, capture_output=True, text=True, check=True).stdout.split()
    return (None if out[0] == "None" else int(out[0])), int(out[1]), int(out[2])


def test_split_cpu_gives_one_device_per_core_that_divides_the_batches():
    count, devices, cores = _split(0, 12, 6)
    assert count == devices == max(n for n in range(1, cores + 1) if 6 % n == 0)
    assert _split(3, 9)[:2] == (3, 3)  # asked for, more than the cores is allowed
    assert _split(4, 6)[:2] == (3, 3)  # the largest count <= 4 dividing 6
    assert _split(0, 6, data=4)[:2] == (4, 4)  # --mesh.data N: exactly N (the batch checked later)


def test_split_cpu_leaves_the_devices_alone(monkeypatch):
    """One device asked for, an explicit XLA device count (this suite's), or JAX started."""
    assert preflight.split_cpu(MeshConfig(cpu_devices=1), 8) is None
    assert "xla_force_host_platform_device_count" in os.environ["XLA_FLAGS"]
    assert preflight.split_cpu(MeshConfig(), 8) is None
    monkeypatch.delenv("XLA_FLAGS")
    jax.devices()
    assert preflight.split_cpu(MeshConfig(cpu_devices=2), 8) is None
    assert jax.config.jax_num_cpu_devices == -1


def test_free_space_counts_every_kept_checkpoint_and_those_there(tmp_path, monkeypatch):
    """Peak use is keep_last (+ the best) checkpoints plus the one being written; what the
    checkpoint directory already holds counts towards it."""
    mib = 2**20
    monkeypatch.setattr(preflight.shutil, "disk_usage",
                        lambda _: SimpleNamespace(free=int(2.5 * mib)))
    with pytest.raises(preflight.RunFailed, match=r"2.5 MiB free, checkpoints of this run need "
                                                  r"about 3.0 MiB more \(2 kept \+ 1 being "):
        preflight.check_free_space(str(tmp_path / "new"), mib, kept=2)
    (tmp_path / "ckpt" / "7").mkdir(parents=True)
    (tmp_path / "ckpt" / "7" / "model").write_bytes(b"x" * mib)          # a saved step
    (tmp_path / "ckpt" / "unusable").mkdir()
    (tmp_path / "ckpt" / "unusable" / "model").write_bytes(b"x" * mib)   # kept aside: no help
    preflight.check_free_space(str(tmp_path / "ckpt"), mib, kept=2)   # 2 MiB more fit
    with pytest.raises(preflight.RunFailed, match=r"1.0 MiB there now"):
        preflight.check_free_space(str(tmp_path / "ckpt"), mib, kept=3)


def test_an_aim_repository_path_that_is_a_file_is_one_error(tmp_path, data_dir, capsys):
    (tmp_path / "aim").write_text("")
    run_dir = tmp_path / "run"
    assert train_cli.main(["sudoku-tiny", "--data.data-dir", str(data_dir), "--run-dir",
                           str(run_dir), "--tracking.repo", str(tmp_path / "aim")]) == 2
    aim = tmp_path / "aim"
    assert capsys.readouterr().err.strip() == (f"error: Aim repository {aim}: {aim} is a file, "
                                               "not a directory")
    assert not run_dir.exists()

