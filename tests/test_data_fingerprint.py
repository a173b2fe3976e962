"""Data-set fingerprints: what they hold, and that a checkpoint trained on ARC set A is refused
on sets built with another seed (B) or num_aug (C) by evaluate.py, solve and resume, unless
--allow-data-mismatch (one warning line); old data sets and checkpoints only warn."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import pytest
from test_data_fixtures import built_sudoku, small_arc

import evaluate as evaluate_cli
from data import build, fingerprint
from data.common import DataError
from data.pipeline import load_metadata
from trm.checkpoint import Checkpointer
from trm.loop import model_config_for, train
from trm.models import TRM
from trm.optim import build_optimizer, build_schedules
from trm.run_config import CheckpointConfig, parse_cli
from trm.train_step import init_train_state


@pytest.fixture(scope="module")
def arc_sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fp")
    raw = small_arc(root / "raw")
    sets = {}
    for name, seed, num_aug in (("A", 0, 2), ("A2", 0, 2), ("B", 1, 2), ("C", 0, 1)):
        sets[name] = root / name
        build.build_arc(raw, ["training", "evaluation"], "evaluation", sets[name],
                        num_aug=num_aug, seed=seed, progress=False)
    return sets


def _run_args(root: Path, data_dir: Path) -> list[str]:
    return ["sudoku-tiny", "--no-track", "--run-dir", str(root), "--data.data-dir",
            str(data_dir), "--data.generate", "none", "--model.hidden-size", "16", "--model.num-heads", "2",
            "--model.L-layers", "1", "--model.H-cycles", "1", "--model.L-cycles", "1",
            "--model.halt-max-steps", "1", "--optim.global-batch-size", "8",
            "--eval.batch-size", "8"]


@pytest.fixture(scope="module")
def checkpoint_on_a(tmp_path_factory, arc_sets) -> Path:
    """A train.py-style checkpoint (untrained weights) of a run on set A."""
    root = tmp_path_factory.mktemp("run")
    cfg = parse_cli(_run_args(root, arc_sets["A"]))
    model_cfg = model_config_for(cfg.model, load_metadata(arc_sets["A"]))
    lr, _ = build_schedules(cfg.optim, 10)
    state = init_train_state(TRM(model_cfg, key=jax.random.key(0)),
                             build_optimizer(cfg.optim, lr), 8, jax.random.key(1), ema=True)
    with Checkpointer(cfg.checkpoint_dir, CheckpointConfig(async_save=False), model_cfg, cfg,
                      data_fingerprint=fingerprint.read(arc_sets["A"])) as checkpointer:
        checkpointer.save(1, state, force=True)
    return Path(cfg.checkpoint_dir)


def test_fingerprint_names_what_identifiers_depend_on(arc_sets, tmp_path):
    a, b, c = (fingerprint.read(arc_sets[k]) for k in "ABC")
    assert fingerprint.read(arc_sets["A2"]) == a                 # rebuilt: same fingerprint
    meta = load_metadata(arc_sets["A"])
    assert (a["kind"], a["num_puzzle_identifiers"], a["seed"], a["num_aug"], a["num_tasks"]) == (
        "arc", meta.num_puzzle_identifiers, 0, 2, 7)
    assert {d.split(":")[0] for d in fingerprint.differences(a, b)} == {"seed", "pool"}
    assert {d.split(":")[0] for d in fingerprint.differences(a, c)} == {
        "num_puzzle_identifiers", "num_aug", "pool"}
    sudoku = fingerprint.read(built_sudoku(tmp_path, n_train=4, n_test=2))
    assert sudoku == {"version": 1, "kind": "sudoku", "vocab_size": 11, "seq_len": 81,
                      "num_puzzle_identifiers": 1}


def test_evaluate_and_solve_refuse_another_data_set_unless_allowed(arc_sets, checkpoint_on_a,
                                                                   tmp_path, capsys):
    base = ["--checkpoint-dir", str(checkpoint_on_a), "--no-progress", "--out",
            str(tmp_path / "r.json")]
    for name, differs in (("B", "seed: checkpoint 0, data set 1"),
                          ("C", "num_puzzle_identifiers: checkpoint")):
        assert evaluate_cli.main(base + ["--data-dir", str(arc_sets[name])]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {arc_sets[name]} differs from the checkpoint's training "
                              "data (") and differs in err
        assert err.endswith("or pass --allow-data-mismatch\n") and err.count("\n") == 1
    assert not (tmp_path / "r.json").exists()
    solve = ["solve", "--checkpoint-dir", str(checkpoint_on_a), "--out", str(tmp_path / "s.png"),
             "--data-dir", str(arc_sets["B"]), "--arc-task"]
    assert evaluate_cli.main(solve + ["ev1"]) == 2
    assert "seed: checkpoint 0, data set 1" in capsys.readouterr().err
    # with the flag the data check passes (one warning) and the next check runs: here an
    # unknown task, so no model has to be compiled to see it
    assert evaluate_cli.main(solve + ["nope", "--allow-data-mismatch"]) == 2
    warning, error = capsys.readouterr().err.splitlines()
    assert warning.startswith("warning: ") and warning.endswith("(--allow-data-mismatch)")
    assert error.startswith("error: ") and "'nope' is not one of its tasks" in error


def test_a_data_set_the_model_cannot_read_is_refused_without_the_flag_hint(arc_sets, tmp_path):
    a = fingerprint.read(arc_sets["A"])
    sudoku = built_sudoku(tmp_path, n_train=4, n_test=2)
    for allow in (False, True):
        with pytest.raises(DataError, match=r"the model cannot read it \(vocab_size, seq_len\); "
                                            "give the data set it was trained on$"):
            fingerprint.check(a, sudoku, allow_mismatch=allow)
    fewer = {**a, "num_puzzle_identifiers": a["num_puzzle_identifiers"] - 1}
    with pytest.raises(DataError, match=r"cannot read it \(num_puzzle_identifiers\)"):
        fingerprint.check(fewer, arc_sets["A"], allow_mismatch=True)


def test_resume_refuses_another_data_set(arc_sets, checkpoint_on_a):
    root = checkpoint_on_a.parent
    with pytest.raises(DataError, match="num_aug: checkpoint 2, data set 1.*pass "
                                        "--data.allow-mismatch$"):
        train(parse_cli([*_run_args(root, arc_sets["C"]), "--max-steps", "2"]), progress=False)


def test_resume_refuses_other_puzzles_under_one_fingerprint(tmp_path, capsys):
    """Two Sudoku sets share a fingerprint (evaluating on either is fine) but not their
    puzzles: a run resumed on the other one is refused, or warned about with the flag."""
    for name in ("s1", "s2", "s3"):
        (tmp_path / name).mkdir()
    first, other = built_sudoku(tmp_path / "s1", 16, 4), built_sudoku(tmp_path / "s2", 24, 4)
    other_test = built_sudoku(tmp_path / "s3", 16, 6)  # the same training puzzles
    assert fingerprint.read(first) == fingerprint.read(other)
    assert fingerprint.contents(first) != fingerprint.contents(other)
    assert fingerprint.contents(first) == fingerprint.contents(other_test)
    root = tmp_path / "run"
    assert train(parse_cli([*_run_args(root, first), "--max-steps", "1"]),
                 progress=False).steps == 1
    assert train(parse_cli([*_run_args(root, other_test), "--max-steps", "2"]),
                 progress=False).steps == 2
    with pytest.raises(DataError, match="holds other training puzzles than the run was "
                                        "trained on.*pass --data.allow-mismatch$"):
        train(parse_cli([*_run_args(root, other), "--max-steps", "3"]), progress=False)
    capsys.readouterr()
    assert train(parse_cli([*_run_args(root, other), "--max-steps", "3",
                            "--data.allow-mismatch"]), progress=False).steps == 3
    assert "holds other training puzzles" in capsys.readouterr().err
    assert train(parse_cli([*_run_args(root, other), "--max-steps", "4"]),
                 progress=False).steps == 4  # step 3 was saved on the other set


def test_old_data_sets_checkpoints_and_official_weights_warn(arc_sets, tmp_path):
    a = fingerprint.read(arc_sets["A"])
    assert fingerprint.check(a, arc_sets["A"], allow_mismatch=False) == []
    old = tmp_path / "old"
    old.mkdir()
    doc = json.loads((arc_sets["A"] / "metadata.json").read_text())
    del doc["fingerprint"]
    (old / "metadata.json").write_text(json.dumps(doc))
    [line] = fingerprint.check(a, old, allow_mismatch=False)
    assert "has no fingerprint (built before fingerprints" in line
    [line] = fingerprint.check(None, arc_sets["A"], allow_mismatch=False)
    assert line.startswith("the checkpoint records no data-set fingerprint")
    [line] = fingerprint.check(None, arc_sets["A"], allow_mismatch=False, official=True)
    assert "identifiers are not the official ones" in line and "--official-rng" in line
    official_ids = tmp_path / "official_ids"
    official_ids.mkdir()
    doc = json.loads((arc_sets["A"] / "metadata.json").read_text())
    doc["build"]["official_rng"] = True
    (official_ids / "metadata.json").write_text(json.dumps(doc))
    assert fingerprint.check(None, official_ids, allow_mismatch=False, official=True) == []
    sudoku = built_sudoku(tmp_path, n_train=4, n_test=2)
    assert fingerprint.check(None, sudoku, allow_mismatch=False, official=True) == []
