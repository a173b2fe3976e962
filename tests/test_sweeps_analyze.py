"""`sweeps analyze` on a synthetic Aim repository: table numbers, merged resumed runs, missing
runs, and the plots."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from sweeps.aimdata import Series, _merge, load_runs, trajectory_seconds
from sweeps.analyze import analyze
from sweeps.catalog import select
from sweeps.runner import Settings, run_config
from trm.tracking import hparams

aim = pytest.importorskip("aim")

EVAL = {"subset": "eval", "set": "test"}
TRAIN = {"subset": "train"}


def _run(repo: Path, name: str, *, evals: dict[int, float], train: range, train_acc: float,
         params: int = 1000, experiment: str = "trm-study", settings: Settings,
         last_step: int = 10) -> None:
    run = aim.Run(repo=str(repo), experiment=experiment, system_tracking_interval=None,
                  capture_terminal_logs=False)
    run.name = name
    run["hparams"] = hparams(run_config(name, settings))
    run["num_params"] = params
    run["last_step"] = last_step
    for step in train:
        for metric, value in (("exact_accuracy", train_acc), ("steps", 3.0),
                              ("lm_loss", 1.0 / step), ("examples_per_s", 100.0 * step)):
            run.track(value, name=metric, step=step, context=TRAIN)
    for step, acc in evals.items():
        for metric, value in (("exact_accuracy", acc), ("accuracy", 0.9),
                              ("adaptive_exact_accuracy", acc - 0.01),
                              ("adaptive_mean_steps", 2.5)):
            run.track(value, name=metric, step=step, context=EVAL)
    run.close()


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, Settings]:
    repo = tmp_path_factory.mktemp("aim")
    settings = Settings(root=str(repo / "runs"), repo=str(repo))
    grid = {"baseline": 0.8, "exp02a_01": 0.6, "tn_H2_L2": 0.4, "exp02b_02": 0.7}
    for i, (name, acc) in enumerate(grid.items()):  # exp02b_02 was killed at step 10 of 20
        _run(repo, name, evals={5: acc / 2, 10: acc}, train=range(1, 11), train_acc=acc + 0.1,
             params=1000 * (i + 1), settings=settings,
             last_step=20 if name == "exp02b_02" else 10)
    # exp05_a was resumed: a second Aim run continues from step 6 (its step 6 wins)
    _run(repo, "exp05_a", evals={5: 0.3}, train=range(1, 7), train_acc=0.2, settings=settings)
    _run(repo, "exp05_a", evals={10: 0.6}, train=range(6, 11), train_acc=0.5, settings=settings)
    _run(repo, "exp05_b", evals={10: 0.9}, train=range(1, 11), train_acc=0.95, params=5000,
         settings=settings)
    _run(repo, "exp05_b", evals={10: 0.1}, train=range(1, 3), train_acc=0.1,
         experiment="other", settings=settings)
    return repo, settings


def test_load_runs_merges_resumed_runs_and_filters_the_experiment(study):
    repo, _ = study
    runs = load_runs(repo, "trm-study")
    assert set(runs) == {"baseline", "exp02a_01", "tn_H2_L2", "exp02b_02", "exp05_a", "exp05_b"}
    acc = runs["exp05_a"].get("exact_accuracy", "train")
    assert acc.steps.tolist() == list(range(1, 11))
    assert acc.values[5] == 0.5 and acc.values[4] == 0.2  # step 6 from the resumed run
    assert runs["exp05_a"].get("exact_accuracy", "eval/test").values.tolist() == [0.3, 0.6]
    assert len(runs["exp05_a"].hashes) == 2
    assert runs["exp05_b"].get("exact_accuracy", "eval/test").values.tolist() == [0.9]
    assert runs["baseline"].hparam("model.hidden_size") == 512


def test_merge_keeps_the_later_value_of_a_step():
    a = Series(np.array([1, 2, 3]), np.array([1.0, 2.0, 3.0]), np.zeros(3))
    b = Series(np.array([3, 4]), np.array([30.0, 40.0]), np.ones(2))
    m = _merge([a, b])
    assert m.steps.tolist() == [1, 2, 3, 4] and m.values.tolist() == [1.0, 2.0, 30.0, 40.0]


def test_trajectory_seconds_counts_redone_steps_once():
    """A run killed at step 9 after a checkpoint at 6, resumed from 6: its first segment counts
    until step 6 was logged; segments without a recorded resume step count whole."""
    def series(steps, t0):
        steps = np.array(steps)
        return Series(steps, np.zeros(len(steps)), t0 + 10.0 * steps)
    first = (100.0, [series(range(1, 10), 100.0)], 0)  # steps 1..9 at 110..190
    second = (500.0, [series(range(7, 13), 500.0 - 60.0)], 6)  # steps 7..12 at 510..560
    assert trajectory_seconds([first, second]) == pytest.approx(60.0 + 60.0)
    assert trajectory_seconds([first]) == pytest.approx(90.0)
    assert trajectory_seconds([first, (second[0], second[1], None)]) == pytest.approx(150.0)
    restarted = (500.0, [series([1, 2], 500.0)], 0)  # a fresh start redoes everything
    assert trajectory_seconds([first, restarted]) == pytest.approx(20.0)
    assert trajectory_seconds([(5.0, [], None)]) == 0.0


def test_analyze_writes_tables_and_plots(study, tmp_path):
    _, settings = study
    messages: list[str] = []
    files = analyze(select("exp05 exp02a exp02b tn_grid"), settings, tmp_path,
                    experiment="trm-study", target=0.5, say=messages.append)
    with open(tmp_path / "exp05.csv") as f:
        rows = {r["entry"]: r for r in csv.DictReader(f)}
    a, b, d = rows["exp05_a"], rows["exp05_b"], rows["exp05_d"]
    assert float(a["exact acc"]) == 0.6 and float(a["best exact acc"]) == 0.6
    assert float(a["train exact acc"]) == 0.5
    assert float(a["train-test gap"]) == pytest.approx(-0.1)
    assert float(a["steps to target"]) == 10 and float(a["steps"]) == 10
    assert float(a["examples/s"]) == pytest.approx(np.median([100.0 * s for s in
                                                             [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]))
    assert float(b["exact acc"]) == 0.9 and float(b["params"]) == 5000  # not the "other" run
    assert float(b["inference steps"]) == 2.5 and float(b["adaptive exact acc"]) == 0.89
    assert d["run"] == "baseline" and float(d["exact acc"]) == 0.8 and d["halt_max_steps"] == "16"
    assert rows["exp05_c"]["run"] == "exp05_c (missing)" and rows["exp05_c"]["exact acc"] == ""
    assert "| exp05_a | exp05_a | 4 |" in (tmp_path / "exp05.md").read_text()
    report = (tmp_path / "report.md").read_text()
    assert "Missing runs" in report and "exp05_c" in report and "tn_H2_L4" in report
    assert any(m.startswith("missing") and "exp05_c" in m for m in messages)
    for name in ("accuracy_vs_params", "accuracy_vs_cycles", "heatmap_H_L", "pareto_time",
                 "pareto_inference_steps", "learning_curves", "steps_to_target"):
        png = tmp_path / f"{name}.png"
        assert png in files and png.stat().st_size > 5000, name
        assert png.read_bytes()[:4] == b"\x89PNG"
    for group in ("exp02a", "exp02b", "tn_grid"):
        assert (tmp_path / f"{group}.csv").is_file()
    with open(tmp_path / "exp02b.csv") as f:
        runs = [r["run"] for r in csv.DictReader(f)]
    assert "exp02b_02 (unfinished: step 10 of 20)" in runs
    assert not any("unfinished" in r for r in runs if not r.startswith("exp02b_02"))
    assert "**Unfinished runs (1)**: exp02b_02 (step 10 of 20)" in report
    assert any(m.startswith("unfinished 1 run ") and "exp02b_02" in m for m in messages)


def test_analyze_says_what_is_missing(study, tmp_path):
    _, settings = study
    with pytest.raises(ValueError, match="none of the 3 runs.*exp10a.*e.g. --scale cpu"):
        analyze(select("exp10a,exp10c,exp10d"), settings, tmp_path, experiment="trm-study")
    with pytest.raises(FileNotFoundError, match="no Aim repository"):
        analyze(select("exp05"), Settings(repo=str(tmp_path / "nowhere")), tmp_path,
                experiment=None)


def test_an_eval_set_no_run_logged_is_refused(study, tmp_path):
    _, settings = study
    with pytest.raises(ValueError, match="no run found logged evaluations of the set 'bogus' "
                                         r"\(--set\); they logged: test"):
        analyze(select("exp05"), settings, tmp_path / "a", experiment="trm-study",
                eval_set="bogus")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("target", ["0", "1.5", "-1", "high"])
def test_a_target_that_is_not_an_accuracy_is_refused(target, capsys):
    from sweeps.__main__ import main

    assert main(["analyze", "exp05", "--target", target]) == 2
    assert "argument --target" in capsys.readouterr().err
