"""A new run started from other weights (--load-checkpoint, official pretrain.py's
load_checkpoint): our checkpoints and official state dicts, the puzzle table fitted to another
data set by the mean of its rows, and the one-line refusals."""

from __future__ import annotations

import dataclasses
import json

import equinox as eqx
import jax
import numpy as np
import pytest
from helpers import FIXTURES
from test_loop import messages, saved_steps, tiny_args, two_step_args

import train as train_cli
from trm.eval_source import initial_model, restore_checkpoint
from trm.models.official import (
    StateDictError,
    config_from_official,
    load_state_dict_file,
    to_official_state_dict,
)

OFFICIAL = FIXTURES / "trm_official_attn_rope.npz"


def official_config(**changes):
    with np.load(OFFICIAL) as f:
        doc = json.loads(str(f["config_json"]))
    return dataclasses.replace(config_from_official(doc["model"], doc["loss_type"]), **changes)


def arrays(model) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(eqx.filter(model, eqx.is_array))]


def test_official_weights_load_and_a_puzzle_table_of_another_size_starts_from_its_mean():
    want = load_state_dict_file(OFFICIAL)
    model, notes = initial_model(OFFICIAL, official_config())
    got = to_official_state_dict(model)
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    assert notes == [f"starting from the official weights {OFFICIAL}"]

    model, notes = initial_model(OFFICIAL, official_config(num_puzzle_identifiers=9))
    table, loaded = np.asarray(model.puzzle_emb), want["inner.puzzle_emb.weights"]
    assert table.shape == (9, loaded.shape[1])
    np.testing.assert_array_equal(table, np.broadcast_to(loaded.mean(0), table.shape))
    assert "has 5 rows, this data set 9 puzzle identifiers" in notes[-1]
    rest = to_official_state_dict(model)
    assert all(np.array_equal(rest[k], want[k]) for k in want if "puzzle_emb" not in k)

    with pytest.raises(StateDictError, match="has shape .* the config needs"):
        initial_model(OFFICIAL, official_config(hidden_size=32, num_heads=2))
    with pytest.raises(FileNotFoundError, match="--load-checkpoint .*nope: no such"):
        initial_model(OFFICIAL.parent / "nope", official_config())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data") / "sudoku"


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, data_dir):
    run = tmp_path_factory.mktemp("source") / "run"
    assert train_cli.main(two_step_args(run, data_dir, "--max-steps", "2")) == 0
    return run


def test_a_new_run_starts_from_a_checkpoint_s_ema_weights(tmp_path, data_dir, source_run,
                                                           capsys):
    """With every learning rate 0, the weights after one step are the ones loaded: the
    source's EMA weights of its newest step (or of the step directory given); a resumed run
    goes on from its own checkpoint."""
    frozen = ("--optim.lr", "0", "--optim.puzzle-emb-lr", "0", "--max-steps", "1")
    source = restore_checkpoint(source_run / "checkpoints")
    for where, step in ((source_run / "checkpoints", 2), (source_run / "checkpoints" / "1", 1)):
        run = tmp_path / f"from_{step}"
        args = two_step_args(run, data_dir, "--load-checkpoint", str(where), *frozen)
        assert train_cli.main(args) == 0
        assert f"notice: starting from {source_run / 'checkpoints'} step {step} (ema weights)" \
            in messages(capsys.readouterr().err)
        started = restore_checkpoint(run / "checkpoints", raw_weights=True)
        expected = source if step == 2 else restore_checkpoint(source_run / "checkpoints", 1)
        assert all(np.array_equal(a, b) for a, b in zip(arrays(started.model),
                                                          arrays(expected.model)))
    assert train_cli.main(two_step_args(tmp_path / "from_2", data_dir, "--load-checkpoint",
                                        str(tmp_path / "gone"), "--max-steps", "2")) == 0
    assert saved_steps(tmp_path / "from_2") == [1, 2]  # resumed: the source is not read


def test_weights_of_another_architecture_are_one_line(tmp_path, data_dir, source_run, capsys):
    args = tiny_args(tmp_path / "run", data_dir, "--model.hidden-size", "64",
                     "--load-checkpoint", str(source_run / "checkpoints"), "--max-steps", "1")
    assert train_cli.main(args) == 2
    err = messages(capsys.readouterr().err)
    assert err[-1].startswith(f"error: --load-checkpoint {source_run / 'checkpoints'} does "
                              "not fit this run's model: parameter ") and "needs" in err[-1]
    assert not (tmp_path / "run").exists()  # nothing left: not even the run's lock
