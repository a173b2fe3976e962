"""The data-parallel train step: official optimiser parity, mesh equivalence, EMA, freezing."""

from __future__ import annotations

import equinox as eqx
import jax
import numpy as np
import optax
import pytest
from helpers import FIXTURES, OFFICIAL_CASES, tiny_batch, tiny_config, tiny_model

from trm import parity
from trm.models.official import from_official_state_dict, to_official_state_dict
from trm.optim import adam_atan2
from trm.train_step import (
    batch_sharding,
    eval_model,
    init_train_state,
    jit_train_step,
    make_mesh,
    make_train_step,
    normalize_metrics,
    state_shardings,
)

BATCH_KEYS = ("inputs", "labels", "puzzle_identifiers")


def run_steps(model, batches, *, num_devices, optimizer=None, lr=1e-3, puzzle_lr=1e-2,
              weight_decay=0.1, puzzle_weight_decay=0.1, ema=True, seed=0):
    """Train on `batches` (tuples of arrays) and return (state, host metrics per step)."""
    mesh = make_mesh(num_devices)
    optimizer = optimizer or adam_atan2(lr, weight_decay=weight_decay)
    global_batch = batches[0][0].shape[0]
    state = init_train_state(model, optimizer, global_batch, jax.random.key(seed), ema=ema)
    state = jax.device_put(state, state_shardings(state, mesh))
    step = jit_train_step(make_train_step(
        mesh=mesh, optimizer=optimizer, lr_schedule=optax.constant_schedule(lr),
        puzzle_lr_schedule=optax.constant_schedule(puzzle_lr),
        puzzle_weight_decay=puzzle_weight_decay, ema_rate=0.999, global_batch=global_batch),
        state, mesh)
    history = []
    for batch in batches:
        batch = jax.device_put(dict(zip(BATCH_KEYS, batch)), batch_sharding(mesh))
        state, metrics = step(state, batch)
        history.append(jax.tree.map(np.asarray, metrics))  # blocks: one step in flight
    return state, history


@pytest.mark.parametrize("case", OFFICIAL_CASES)
def test_three_official_steps_give_official_parameters(case):
    fx = parity.load_fixture(str(FIXTURES / f"trm_official_{case}.npz"))
    s = fx.settings
    model = from_official_state_dict(fx.params, fx.config)
    state, history = run_steps(
        model, [fx.batch(k) for k in range(3)], num_devices=1, lr=s["lr"],
        puzzle_lr=s["puzzle_emb_lr"], weight_decay=s["weight_decay"],
        puzzle_weight_decay=s["puzzle_emb_weight_decay"])
    # After three updates the parameters carry the recursion's float32 chaos: hold them to
    # the parity command's one rule, max(1e-5, 30 x the spread of a one-ulp weight change).
    noise, _ = run_steps(
        from_official_state_dict(parity.one_ulp_perturbation(fx.params), fx.config),
        [fx.batch(k) for k in range(3)], num_devices=1, lr=s["lr"],
        puzzle_lr=s["puzzle_emb_lr"], weight_decay=s["weight_decay"],
        puzzle_weight_decay=s["puzzle_emb_weight_decay"])
    ours, spread = to_official_state_dict(state.model), to_official_state_dict(noise.model)
    for name, value in ours.items():
        ref = fx.records[f"train/step3/param_after/{name}"]
        sensitivity = parity.relative_error(spread[name], value)
        assert parity.relative_error(value, ref) <= max(
            parity.TOLERANCE, parity.SENSITIVITY_FACTOR * sensitivity), name
    for k, metrics in enumerate(history, start=1):
        ref = fx.records[f"train/step{k}/metric_count"]
        assert float(metrics["count"]) == float(ref)
        assert bool(metrics["state_finite"])  # the new state may be saved
        assert parity.relative_error(metrics["lm_loss"], fx.records[
            f"train/step{k}/metric_lm_loss"]) < 1e-4
    np.testing.assert_array_equal(state.carry.halted, fx.records["train/step3/halted"])


def test_eight_devices_match_one_device():
    config = tiny_config(halt_exploration_prob=0.5)
    batches = [tiny_batch(config, 8, seed=k) for k in range(3)]
    one, h1 = run_steps(tiny_model(config), batches, num_devices=1)
    eight, h8 = run_steps(tiny_model(config), batches, num_devices=8)
    for a, b in zip(jax.tree.leaves((one.model, one.ema)), jax.tree.leaves((eight.model,
                                                                            eight.ema))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=2e-6)
    np.testing.assert_array_equal(one.carry.halted, eight.carry.halted)
    np.testing.assert_array_equal(one.carry.steps, eight.carry.steps)
    for m1, m8 in zip(h1, h8):
        for k in m1:
            np.testing.assert_allclose(m1[k], m8[k], rtol=1e-5)
    assert int(eight.step) == 3


def test_ema_tracks_the_network_but_not_the_puzzle_table():
    config = tiny_config()
    model = tiny_model(config)
    w0 = np.array(model.lm_head.weight)  # the state donates the model's buffers
    state, _ = run_steps(model, [tiny_batch(config, 4, seed=k) for k in range(2)],
                         num_devices=1)
    w2 = np.asarray(state.model.lm_head.weight)
    ema = np.asarray(state.ema.lm_head.weight)
    # with rate r the EMA after two steps is r^2 w0 + r(1-r) w1 + (1-r) w2: between w0 and w2
    assert np.abs(ema - w0).max() < np.abs(w2 - w0).max()
    assert state.ema.puzzle_emb is None and state.ema.H_init is None
    evaluated = eval_model(state)
    np.testing.assert_array_equal(evaluated.lm_head.weight, state.ema.lm_head.weight)
    np.testing.assert_array_equal(evaluated.puzzle_emb, state.model.puzzle_emb)


def test_frozen_weights_train_only_puzzle_embeddings():
    config = tiny_config()
    model = tiny_model(config)
    before = jax.tree.map(np.array, (model.lm_head.weight, model.puzzle_emb))
    state, _ = run_steps(model, [tiny_batch(config, 4)], num_devices=1,
                         optimizer=optax.set_to_zero(), ema=False)
    np.testing.assert_array_equal(state.model.lm_head.weight, before[0])
    assert np.abs(np.asarray(state.model.puzzle_emb) - before[1]).max() > 0


def test_normalize_metrics_follows_official_reporting():
    sums = {"count": np.float32(4), "accuracy": np.float32(3), "lm_loss": np.float32(16),
            "steps": np.float32(10)}
    out = normalize_metrics(sums, global_batch=8)
    assert out == {"accuracy": 0.75, "lm_loss": 2.0, "steps": 2.5, "count": 4.0}
    # no row halted: nothing measured, so no accuracy or steps (not a 0); the loss is there
    assert normalize_metrics(dict(sums, count=np.float32(0), accuracy=np.float32(0),
                                  steps=np.float32(0)), 8) == {"lm_loss": 2.0, "count": 0.0}


def test_exploration_keeps_rows_going_past_a_positive_q_halt():
    config = tiny_config(halt_exploration_prob=1.0, halt_max_steps=8)
    model = eqx.tree_at(lambda m: m.q_head.bias, tiny_model(config), jax.numpy.array([9.0, 0]))
    _, h = run_steps(model, [tiny_batch(config, 8)] * 2, num_devices=2)
    # q_halt > 0 everywhere, but exploration keeps every row going for >= 2 steps
    assert float(h[0]["count"]) == 0
