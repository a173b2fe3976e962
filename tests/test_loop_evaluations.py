"""Evaluations within a training run: which checkpoints carry metrics, an evaluation cut
short by a stop, the terminal line, and running out of memory."""

from __future__ import annotations

import pytest
from test_loop import saved_steps, tiny_args

from trm import loop
from trm.loop import train
from trm.run_config import parse_cli


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data") / "sudoku"


def test_only_evaluated_steps_carry_metrics_and_the_best_survives_a_resume(
        tmp_path, data_dir, monkeypatch):
    """A periodic checkpoint between evaluations is saved without metrics (with the last
    evaluation's it tied with the evaluated step, and orbax's BestN keeps the later of equals:
    the 'best' held weights never evaluated). The metrics are on disk, so a resumed run still
    ranks the steps saved before it (orbax kept them in memory only: the best was deleted)."""
    saves = []
    real_save = loop.Checkpointer.save

    def recorded(self, step, *args, metrics=None, **kwargs):
        saves.append((step, metrics))
        return real_save(self, step, *args, metrics=metrics, **kwargs)

    monkeypatch.setattr(loop.Checkpointer, "save", recorded)
    args = tiny_args(tmp_path / "run", data_dir, "--checkpoint.every-n-steps", "5",
                     "--checkpoint.keep-last", "1", "--checkpoint.keep-best-metric",
                     "test/lm_loss", "--checkpoint.best-mode", "max")
    train(parse_cli([*args, "--max-steps", "7"]), progress=False)
    train(parse_cli([*args, "--max-steps", "11"]), progress=False)  # resumes at 7
    assert [step for step, _ in saves] == [5, 6, 7, 10, 11]  # evaluations at 6, 7 and 11
    assert [metrics is not None for _, metrics in saves] == [False, True, True, False, True]
    loss = {step: m["test/lm_loss"] for step, m in saves if m is not None}
    best = max(sorted(loss), key=lambda s: (loss[s], s))  # ties: the later step
    assert saved_steps(tmp_path / "run") == sorted({best, 11})
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager((tmp_path / "run/checkpoints").resolve()) as manager:
        assert manager.metrics(best)["test/lm_loss"] == loss[best]


@pytest.mark.parametrize("stop_at", [pytest.param(6, marks=pytest.mark.slow), 12])
def test_an_evaluation_cut_short_runs_when_the_run_resumes(tmp_path, data_dir, capsys,
                                                          monkeypatch, stop_at):
    """SIGTERM during an evaluation saves its step without results; the resumed run evaluates
    that step first (also when it is the last step, where nothing is left to train)."""
    from trm.cli import Terminated

    real, calls = loop.evaluate, []

    def cut_short(model, data, cfg, mesh, **kwargs):  # evaluations at steps 6 and 12
        calls.append(1)
        if len(calls) == stop_at // 6:
            raise Terminated
        return real(model, data, cfg, mesh, **kwargs)

    args = tiny_args(tmp_path / "run", data_dir, "--max-steps", "12")
    monkeypatch.setattr(loop, "evaluate", cut_short)
    with pytest.raises(Terminated):
        train(parse_cli(args), progress=False)
    assert saved_steps(tmp_path / "run")[-1] == stop_at
    monkeypatch.setattr(loop, "evaluate", real)
    capsys.readouterr()
    resumed = train(parse_cli(args), progress=True)
    out, err = capsys.readouterr()
    assert (f"notice: evaluating step {stop_at} first: it was saved without the evaluation "
            "due at it (the run stopped)") in err
    assert "eval test:   0%" in err  # the evaluation's own bar (a long one looked hung)
    evals = [line.split(" test:")[0] for line in (out + err).splitlines()
             if line.startswith("eval step")]
    assert evals == ([f"eval step {stop_at}/12 epoch {stop_at // 6}.0"]
                     + (["eval step 12/12 epoch 2.0"] if stop_at == 6 else []))
    assert resumed.steps == 12 and resumed.eval_metrics["test"]["count"] == 16
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager((tmp_path / "run/checkpoints").resolve()) as manager:
        late = manager.metrics(stop_at)  # the late evaluation ranks in keep-best like any
    assert late is not None and late["test/count"] == 16 and "test/exact_accuracy" in late
    again = train(parse_cli(args), progress=False)  # finished and evaluated: nothing to do
    err = capsys.readouterr().err
    assert "nothing to train" in err and "evaluating step" not in err
    assert again.eval_metrics == {}


def test_running_out_of_memory_is_one_error_line(capsys):
    """XLA failing to allocate (an ARC preset's batch on a CPU asked for 74 GiB) ends every
    command with one line naming the size and what to lower, exit status 1, no traceback."""
    import jax.numpy as jnp

    from trm.cli import run_cli

    assert run_cli(lambda argv: jnp.zeros(10**11).block_until_ready(), []) == 1
    assert capsys.readouterr().err == (
        "error: out of memory: Out of memory allocating 400000000000 bytes (372.5 GiB); use a "
        "smaller batch (train.py --optim.global-batch-size / --eval.batch-size, evaluate.py "
        "--batch-size) or model, or more devices\n")


def test_the_eval_line_of_an_arc_run_shows_pass_at_1_and_2():
    from trm.progress import eval_line

    metrics = {"exact_accuracy": 0.25, "accuracy": 0.5, "adaptive_mean_steps": 2.0,
               "adaptive_exact_accuracy": 0.125, "pass@1": 0.375, "pass@10": 0.5,
               "pass@2": 0.4375}
    assert eval_line(12, 24, 1.0, "test", metrics, 75.0) == (
        "eval step 12/24 epoch 1.0 test: exact 0.2500 token 0.5000 halting 2.00 steps "
        "(exact 0.1250) pass@1 0.3750 pass@2 0.4375 [1:15]")
    unscored = {**metrics, "count": 0.0}  # ARC's hidden test set: outputs unknown
    assert eval_line(12, 24, 1.0, "test", unscored, 75.0) == (
        "eval step 12/24 epoch 1.0 test: no known outputs to score, predictions only [1:15]")


def test_an_evaluation_does_not_count_in_the_bars_step_rate():
    import io

    from tqdm import tqdm

    from trm.progress import Reporter
    from trm.tracking import Tracker

    bar = tqdm(total=10, file=io.StringIO(), mininterval=0)
    report = Reporter(Tracker(None), bar, global_batch=8, examples_per_epoch=80, last_step=10)
    bar.update(1)
    bar.start_t -= 100.0  # a 100 s evaluation since the bar last moved
    bar.last_print_t -= 100.0
    report.restart_clock()
    assert bar.format_dict["elapsed"] < 1.0
    bar.close()


def test_a_keep_best_metric_the_evaluation_lacks_is_named_once(tmp_path, data_dir, capsys):
    """A misspelt --checkpoint.keep-best-metric passes the command line's check (the set is
    evaluated) but would keep no step as the best: one warning after the first evaluation."""
    args = tiny_args(tmp_path / "run", data_dir, "--checkpoint.keep-best-metric",
                     "test/exact_acc", "--max-steps", "7")
    train(parse_cli(args), progress=False)  # evaluations at steps 6 and 7
    warnings = [line for line in capsys.readouterr().err.splitlines()
                if line.startswith("warning: --checkpoint.keep-best-metric")]
    assert len(warnings) == 1 and "test/exact_acc: no such metric" in warnings[0]
    assert "exact_accuracy" in warnings[0]
    train(parse_cli([*args[:-4], "--max-steps", "8"]), progress=False)  # the default: auto
    assert "keep-best-metric" not in capsys.readouterr().err
