"""HRM, the transformer baseline and TRM-hier6: shapes, gradient structure, halting rules,
official names (the TRM family's own tests are in test_model.py)."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import FIXTURES, tiny_batch, tiny_config, tiny_model

from trm.config import ConfigError
from trm.loss import step_loss
from trm.models import (
    HRM,
    TRM,
    TransformerBaseline,
    build_model,
    network_filter,
    replace_config,
)
from trm.models.official import from_official_state_dict, official_names, to_official_state_dict
from trm.parity import load_fixture

ARCHS = {
    "hrm": {"arch": "hrm", "H_layers": 1, "H_cycles": 2, "L_cycles": 3},
    "transformers_baseline": {"arch": "transformers_baseline", "H_layers": 2},
    "trm_hier6": {"arch": "trm_hier6", "H_cycles": 2, "L_cycles": 4},
}


def arch_config(arch: str, **overrides):
    return tiny_config(**{**ARCHS[arch], **overrides})


@eqx.filter_jit
def network_grads(model, carry, train=False):
    diff, static = eqx.partition(model, network_filter(model))
    key = jax.random.key(0) if train else None
    return jax.grad(lambda d: step_loss(eqx.combine(d, static), carry, train=train,
                                        key=key)[0])(diff)


@eqx.filter_jit
def act_step(model, carry, train):
    return model.step(carry, train=train)


@eqx.filter_jit
def first_step(model, batch):
    return model(model.initial_carry(batch[0].shape[0]), *batch, train=False)


@pytest.mark.parametrize("arch, cls, n_latents", [
    ("hrm", HRM, ()), ("transformers_baseline", TransformerBaseline, None),
    ("trm_hier6", TRM, (6,))])
def test_shapes(arch, cls, n_latents):
    config = arch_config(arch)
    model = tiny_model(config)
    L = config.total_len  # hrm and the baseline: 1 prefix position, trm_hier6: 2
    assert type(model) is cls and L == (14 if arch == "trm_hier6" else 13)
    carry, out = first_step(model, tiny_batch(config))
    assert carry.z_H.shape == (3, L, 32) and out.logits.shape == (3, 12, 7)
    if n_latents is None:
        assert carry.z_L is None and model.L_init is None
    else:
        assert carry.z_L.shape == (3, *n_latents, L, 32)
        assert model.L_init.shape == (*n_latents, 32)
    assert out.q_halt_logits.shape == out.q_continue_logits.shape == (3,)


def test_hrm_one_step_gradient():
    """HRM's weights get gradient only through the last L update and the last H update:
    the same gradient as those two calls differentiated from the latents the frozen
    updates produce by hand."""
    config = arch_config("hrm", H_cycles=2, L_cycles=2)
    model, batch = tiny_model(config), tiny_batch(config)
    carry = model.reset(model.initial_carry(3), *batch)
    full = network_grads(model, carry)

    @jax.jit
    def frozen_updates(model, carry):
        x = model.embed(carry.inputs, model.puzzle_rows(carry.puzzle_identifiers))
        rope = model.rope()
        def L(z, inj):
            return model.L_level(z, inj, rope)

        def H(z, inj):
            return model.H_level(z, inj, rope)

        z_H, z_L = carry.z_H, carry.z_L
        z_L = L(L(z_L, z_H + x), z_H + x)   # cycle 1: two L updates, one H update
        z_H = H(z_H, z_L)
        return z_H, L(z_L, z_H + x)         # cycle 2: its first L update, frozen too

    z_H, z_L = frozen_updates(model, carry)
    started = eqx.tree_at(lambda c: (c.z_H, c.z_L), carry, (z_H, z_L))
    one_step = with_config(model, H_cycles=1, L_cycles=1)  # just the two gradient calls
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(network_grads(one_step, started))):
        # equal up to float32 rounding of the frozen latents (computed here outside the loop)
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()


def with_config(model, **changes):
    return replace_config(model, dataclasses.replace(model.config, **changes))


def test_hrm_no_gradient_into_the_incoming_latents():
    config = arch_config("hrm")
    model, batch = tiny_model(config), tiny_batch(config)
    z = jnp.ones((3, config.total_len, config.hidden_size))

    def loss(z_H, z_L):
        carry = model.reset(model.initial_carry(3), *batch)
        carry = eqx.tree_at(lambda c: (c.z_H, c.z_L, c.halted), carry,
                            (z_H, z_L, jnp.zeros(3, bool)))
        return step_loss(model, carry, train=False)[0]

    g_H, g_L = jax.jit(jax.grad(loss, argnums=(0, 1)))(z, z)
    assert np.all(g_H == 0) and np.all(g_L == 0)


@pytest.mark.parametrize("arch, halts_on, trains_q_continue", [
    ("hrm", "q_continue", True), ("transformers_baseline", "q_continue", False),
    pytest.param("trm_hier6", "zero", False, marks=pytest.mark.slow)])
def test_training_halting_and_q_continue(arch, halts_on, trains_q_continue):
    """Training halts on q_halt > q_continue (hrm, baseline) or q_halt > 0 (trm family); hrm
    trains Q-continue, while the baseline's q_head row 1 and bias[1] get exactly zero
    gradient (the official loss head never asks for its target)."""
    config = arch_config(arch, halt_max_steps=3)
    model = tiny_model(config)
    carry = model.reset(model.initial_carry(3), *tiny_batch(config))
    new, out = act_step(model, carry, True)
    expect = out.q_halt_logits > (out.q_continue_logits if halts_on == "q_continue" else 0)
    np.testing.assert_array_equal(new.halted, expect)
    assert (out.target_q_continue is not None) == trains_q_continue

    grads = network_grads(model, carry, True)
    row1 = np.abs(np.asarray(grads.q_head.weight[1])).max() + abs(float(grads.q_head.bias[1]))
    assert (row1 > 0) == trains_q_continue
    assert np.abs(np.asarray(grads.q_head.weight[0])).max() > 0
    names = {"hrm": ("H_level", "L_level"), "trm_hier6": ("net",),
             "transformers_baseline": ("H_level",)}[arch]
    stacks = [getattr(grads, n) for n in names]
    for stack in stacks:
        assert all(np.abs(leaf).max() > 0 for leaf in jax.tree.leaves(stack))
    for buffer in ("H_init", "L_init", "puzzle_emb"):
        assert getattr(grads, buffer) is None


def test_baseline_act_switches():
    config = arch_config("transformers_baseline", halt_max_steps=8)
    model = tiny_model(config)
    # a Q head that always says "halt"
    model = eqx.tree_at(lambda m: m.q_head.bias, model, jnp.array([5.0, -5.0]))
    carry = model.reset(model.initial_carry(3), *tiny_batch(config))
    assert model.step(carry, train=True)[0].halted.all()
    assert not model.step(carry, train=False)[0].halted.any()
    off = with_config(model, act_enabled=False)
    assert not off.step(carry, train=True)[0].halted.any()
    inference = with_config(model, act_inference=True)
    assert inference.step(carry, train=False)[0].halted.all()


def test_hier6_unused_latents_keep_their_initial_vectors():
    config = arch_config("trm_hier6", L_cycles=4)
    model = tiny_model(config)
    carry, _ = first_step(model, tiny_batch(config))
    for k in range(6):
        kept = np.allclose(carry.z_L[:, k], np.broadcast_to(model.L_init[k], carry.z_L[:, k].shape))
        assert kept == (k >= 4), k


def test_baseline_attention_at_width_heads_times_head_dim():
    """The official 512 / 12: heads of width 42, attention at width 504."""
    config = arch_config("transformers_baseline", hidden_size=36, num_heads=8)
    model = eqx.filter_eval_shape(build_model, config, key=jax.random.key(0))
    attn = model.H_level.blocks.mixer
    assert attn.qkv_proj.weight.shape == (2, 3 * 32, 36) and attn.o_proj.weight.shape == (2, 36, 32)
    carry, out = eqx.filter_eval_shape(first_step, model, tiny_batch(config, 2))
    assert out.logits.shape == (2, 12, 7) and carry.z_H.shape == (2, 13, 36)


@pytest.mark.parametrize("overrides, message", [
    ({"arch": "trm_hier6", "L_cycles": 7}, "L_cycles must be <= 6"),
    ({"arch": "hrm", "H_layers": 0}, "H_layers must be >= 1"),
    ({"arch": "transformers_baseline", "H_layers": 2, "pos_encodings": "none"}, "rope or learned"),
    ({"arch": "transformers_baseline", "H_layers": 2, "mlp_t": True}, "mlp_t must be off"),
    ({"arch": "trm", "hidden_size": 36, "num_heads": 8}, "not divisible"),
])
def test_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(**overrides)


def test_prefix_length_rules():
    """hrm and the baseline have no puzzle_emb_len: ceil(ndim / hidden) positions."""
    assert arch_config("hrm", puzzle_emb_ndim=40).prefix_len == 2
    assert arch_config("transformers_baseline", puzzle_emb_len=16).prefix_len == 1
    assert arch_config("trm_hier6", puzzle_emb_len=16).prefix_len == 16


@pytest.mark.parametrize("name", [
    pytest.param("hrm_official_attn_learned", marks=pytest.mark.slow),
    pytest.param("transformers_baseline_official_attn_rope", marks=pytest.mark.slow),
    "trm_hier6_official_attn_rope"])
def test_official_names_round_trip(name):
    fx = load_fixture(str(FIXTURES / f"{name}.npz"))
    assert sorted(official_names(fx.config)) == sorted(fx.params)
    model = from_official_state_dict(fx.params, fx.config)
    back = to_official_state_dict(model)
    assert sorted(back) == sorted(fx.params)
    for k, v in fx.params.items():
        np.testing.assert_array_equal(back[k], v)
