"""A training run against the data set it is given: the ARC evaluator on other data, and a
preset meant for another kind of data."""

from __future__ import annotations

import pytest
from test_loop import messages, tiny_args

import train as train_cli
from data.generate import ensure_tiny_dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return ensure_tiny_dataset("sudoku", tmp_path_factory.mktemp("data") / "sudoku",
                               train_count=48, test_count=16, min_clues=40)  # as tiny_args


def test_the_arc_evaluator_on_other_data_is_refused_before_training(tmp_path, data_dir,
                                                                    capsys):
    """Not at the first evaluation, after hours of training with nothing saved."""
    args = tiny_args(tmp_path / "run", data_dir, "--eval.evaluators", "arc")
    assert train_cli.main(args) == 2
    err = messages(capsys.readouterr().err)
    assert err == [f"error: the ARC evaluator needs an ARC data set, {data_dir} is sudoku"]
    assert not (tmp_path / "run").exists()


def test_a_preset_for_other_data_warns(tmp_path, data_dir, capsys):
    """maze-hard's model on a Sudoku set: the data set's length and vocabulary win, and the
    run says so (it stops here at the schedule check, after the warning)."""
    assert train_cli.main(["maze-hard", "--no-track", "--data.data-dir", str(data_dir),
                           "--run-dir", str(tmp_path / "run"), "--optim.epochs", "1", "--eval.eval-interval", "1",
                           "--optim.global-batch-size", "100000"]) == 2
    err = messages(capsys.readouterr().err)
    assert err[0] == (f"warning: {data_dir} is a sudoku data set: --model.seq-len 900 (the "
                      "data set has 81), --model.vocab-size 6 (the data set has 11); the model "
                      "takes the data set's values (a preset meant for other data?)")
    assert len(err) == 2 and "make no step" in err[1]
    assert train_cli.main(["sudoku-extreme", "--no-track", "--data.data-dir", str(data_dir),
                           "--run-dir", str(tmp_path / "run"), "--optim.epochs", "1", "--eval.eval-interval", "1",
                           "--optim.global-batch-size", "100000"]) == 2
    assert len(messages(capsys.readouterr().err)) == 1  # its own kind of data: no warning
    # the other way round: Sudoku's sizes are also ModelConfig's defaults
    maze = ensure_tiny_dataset("maze", tmp_path / "maze", train_count=4, test_count=2, size=6)
    assert train_cli.main(["sudoku-extreme", "--no-track", "--data.data-dir", str(maze),
                           "--run-dir", str(tmp_path / "run"), "--optim.epochs", "1",
                           "--eval.eval-interval", "1",
                           "--optim.global-batch-size", "100000"]) == 2
    err = messages(capsys.readouterr().err)
    assert err[0] == (f"warning: {maze} is a maze data set: --model.seq-len 81 (the data set "
                      "has 36), --model.vocab-size 11 (the data set has 6); the model takes "
                      "the data set's values (a preset meant for other data?)")
