"""Study features: recursion-depth curriculum, annealed exploration, compute-aware halting."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config

from trm.config import ConfigError
from trm.curriculum import linear_anneal, phase_config, phase_index, validate_phases
from trm.loss import bce_with_logits, loss_head
from trm.models import Carry, Outputs

PHASES = ((0.0, 1, 2), (0.3, 2, 4), (0.7, 3, 6))


@pytest.mark.parametrize("step,expect", [(0, 0), (29, 0), (30, 1), (69, 1), (70, 2), (99, 2)])
def test_phase_index(step, expect):
    assert phase_index(PHASES, step, 100) == expect


def test_phase_config_changes_only_cycles():
    config = tiny_config()
    new = phase_config(config, PHASES[1])
    assert (new.H_cycles, new.L_cycles) == (2, 4)
    assert dataclasses.replace(new, H_cycles=config.H_cycles, L_cycles=config.L_cycles) == config


@pytest.mark.parametrize("phases", [((0.1, 1, 1),), ((0.0, 1, 1), (0.0, 2, 2)),
                                    ((0.0, 0, 1),), ((0.0, 1, 1), (1.0, 2, 2))])
def test_bad_phases_are_rejected(phases):
    with pytest.raises(ConfigError):
        validate_phases(phases)


def test_linear_anneal():
    schedule = linear_anneal(0.3, 0.05, 100)
    values = [float(schedule(s)) for s in (0, 50, 100, 200)]
    np.testing.assert_allclose(values, [0.3, 0.175, 0.05, 0.05], rtol=1e-6)


def test_exploration_probability_can_be_given_per_step():
    from helpers import tiny_model
    model = tiny_model(tiny_config(halt_max_steps=6))
    none = model.exploration_min_steps(jax.random.key(0), 1000, jnp.float32(0.0))
    every = model.exploration_min_steps(jax.random.key(0), 1000, jnp.float32(1.0))
    assert int(none.max()) == 0 and int(every.min()) >= 2


def test_step_penalty_pushes_halting_more_after_more_steps():
    z = jnp.zeros((2, 1, 1))
    labels = jnp.array([[1], [1]])
    carry = Carry(z_H=z, z_L=z, steps=jnp.array([1, 4]), halted=jnp.array([True, True]),
                  inputs=labels, labels=labels, puzzle_identifiers=jnp.zeros(2, jnp.int32))
    out = Outputs(jax.nn.one_hot(jnp.array([[0], [0]]), 2), jnp.array([-1.0, -1.0]),
                  jnp.zeros(2))
    base, m0 = loss_head(carry, out, "softmax")
    total, m1 = loss_head(carry, out, "softmax", step_penalty=0.1)
    extra = 0.1 * (1 + 4) * float(bce_with_logits(jnp.float32(-1.0), jnp.float32(1.0)))
    assert float(m1["q_halt_loss"]) == pytest.approx(float(m0["q_halt_loss"]) + extra, rel=1e-6)
    assert float(total) == pytest.approx(float(base) + 0.5 * extra, rel=1e-6)
    grad = jax.grad(lambda q: loss_head(carry, Outputs(out.logits, q, out.q_continue_logits),
                                        "softmax", step_penalty=0.1)[0])(out.q_halt_logits)
    grad0 = jax.grad(lambda q: loss_head(carry, Outputs(out.logits, q, out.q_continue_logits),
                                         "softmax")[0])(out.q_halt_logits)
    push = np.asarray(grad0 - grad)  # towards a larger q_halt, growing with steps
    assert push[1] > push[0] > 0


def test_lr_scales_with_batch():
    from trm.optim import build_schedules, lr_batch_scale
    from trm.run_config import OptimConfig
    base = {"lr": 1e-4, "puzzle_emb_lr": 1e-2, "lr_warmup_steps": 0, "lr_reference_batch": 6144}
    sqrt = OptimConfig(global_batch_size=24576, lr_batch_scaling="sqrt", **base)
    assert lr_batch_scale(sqrt) == pytest.approx(2.0)
    lr, puzzle_lr = build_schedules(sqrt, total_steps=100)
    assert float(lr(5)) == pytest.approx(2e-4) and float(puzzle_lr(5)) == pytest.approx(2e-2)
    linear = OptimConfig(global_batch_size=1536, lr_batch_scaling="linear", **base)
    assert lr_batch_scale(linear) == pytest.approx(0.25)
    assert lr_batch_scale(OptimConfig(global_batch_size=1536, **base)) == 1.0


def test_checkpoint_averaging(tmp_path):
    import equinox as eqx
    from helpers import tiny_model

    from trm.checkpoint import Checkpointer, average_trees, restore_last
    from trm.run_config import CheckpointConfig

    config = tiny_config()
    models = [tiny_model(config, seed=s) for s in range(3)]
    with Checkpointer(tmp_path, CheckpointConfig(keep_last=3, async_save=False),
                      config) as ckpt:
        for step, m in enumerate(models, start=1):
            ckpt.save(step, m)
        ckpt.wait_until_finished()
        last_two = restore_last(ckpt, models[0], 2, before=4)
        before_3 = restore_last(ckpt, models[0], 2, before=3)  # steps 1 and 2
    mean = average_trees(last_two)
    expect = (np.asarray(models[1].lm_head.weight) + np.asarray(models[2].lm_head.weight)) / 2
    np.testing.assert_allclose(mean.lm_head.weight, expect, rtol=1e-6)
    np.testing.assert_array_equal(before_3[0].lm_head.weight, models[0].lm_head.weight)
    np.testing.assert_array_equal(before_3[1].lm_head.weight, models[1].lm_head.weight)
    assert eqx.tree_equal(jax.tree.structure(mean), jax.tree.structure(models[0]))
