"""Model structure: init statistics, size rules, shapes, halting, gradients, dtypes, variants."""

from __future__ import annotations

import dataclasses
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest
from helpers import tiny_batch, tiny_config, tiny_model

from trm.loss import step_loss
from trm.models import TRM, network_filter, replace_config
from trm.models.layers import (
    Linear,
    einsum,
    gated_silu,
    rope_tables,
    swiglu_intermediate_size,
    trunc_normal,
)


def test_trunc_normal_std_and_bounds():
    x = np.asarray(trunc_normal(jax.random.key(0), (1024, 1024), 0.05))
    assert abs(x.std() / 0.05 - 1) < 0.05
    assert abs(x.mean()) < 1e-3
    # cut at +-2 of the underlying normal, whose std is larger than the target
    assert np.abs(x).max() <= 2 * 0.05 / 0.8796 + 1e-6
    assert np.abs(x).max() > 2 * 0.05  # not a plain clip at 2 * target


def test_linear_lecun_init():
    lin = Linear(2048, 512, key=jax.random.key(1))
    assert lin.weight.shape == (512, 2048) and lin.bias is None
    assert abs(float(lin.weight.std()) * np.sqrt(2048) - 1) < 0.05


@pytest.mark.parametrize("hidden,expansion,inter", [(512, 4.0, 1536), (64, 4.0, 256), (97, 4.0, 512),
                                                    (384, 4.0, 1024), (256, 2.0, 512)])
def test_swiglu_size_rule(hidden, expansion, inter):
    assert swiglu_intermediate_size(hidden, expansion) == inter


def test_rope_tables_rotate_half_layout():
    cos, sin = rope_tables(5, 8, 10000.0)
    assert cos.shape == (5, 8)
    np.testing.assert_allclose(cos[:, :4], cos[:, 4:])
    np.testing.assert_allclose(sin[3, 0], np.sin(3.0), rtol=1e-6)
    np.testing.assert_allclose(sin[3, 1], np.sin(3.0 / 10000 ** (2 / 8)), rtol=1e-6)


def test_special_inits():
    config = tiny_config()
    model = TRM(config, key=jax.random.key(0))
    assert np.all(model.q_head.weight == 0) and np.all(model.q_head.bias == -5)
    assert np.all(model.puzzle_emb == 0)
    assert model.H_init.shape == (config.hidden_size,)
    assert model.net.blocks.mixer.qkv_proj.weight.shape == (2, 3 * 32, 32)


@pytest.mark.parametrize("overrides", [{}, {"mlp_t": True, "pos_encodings": "none"},
                                       {"pos_encodings": "learned", "puzzle_emb_len": 0,
                                        "puzzle_emb_ndim": 40}, {"arch": "trm_singlez"},
                                       {"puzzle_emb_ndim": 0}])
def test_act_step_shapes(overrides):
    config = tiny_config(**overrides)
    model = tiny_model(config) if config.puzzle_dim else TRM(config, key=jax.random.key(0))
    inputs, labels, ids = tiny_batch(config)
    carry, out = model(model.initial_carry(3), inputs, labels, ids, train=False)
    assert carry.z_H.shape == (3, config.total_len, config.hidden_size)
    assert out.logits.shape == (3, config.seq_len, config.vocab_size)
    assert out.q_halt_logits.shape == (3,) and out.q_halt_logits.dtype == jnp.float32
    assert np.all(np.isfinite(out.logits))


def test_learned_positions_prefix_is_ceil_of_ndim():
    config = tiny_config(pos_encodings="learned", puzzle_emb_len=0, puzzle_emb_ndim=40)
    assert config.prefix_len == 2
    assert TRM(config, key=jax.random.key(0)).embed_pos.weight.shape == (14, 32)


def test_wrong_shapes_are_rejected():
    config = tiny_config()
    model = tiny_model(config)
    inputs, labels, ids = tiny_batch(config)
    with pytest.raises(jaxtyping.TypeCheckError):
        model(model.initial_carry(3), inputs, labels[:, :-1], ids, train=False)
    with pytest.raises(jaxtyping.TypeCheckError):
        model(model.initial_carry(3), inputs, labels, ids[:2], train=False)
    with pytest.raises(jaxtyping.TypeCheckError):
        model.embed(inputs.astype(jnp.float32), None)


def _with_q_bias(model, bias):
    return eqx.tree_at(lambda m: (m.q_head.weight, m.q_head.bias), model,
                       (jnp.zeros_like(model.q_head.weight), jnp.array([bias, -bias])))


# jitted (compiled once per model structure): op-by-op, a recursion takes seconds per step
_act_step = eqx.filter_jit(lambda model, carry, *batch, train, key=None: model(
    carry, *batch, train=train, key=key))
_jit_step_loss = eqx.filter_jit(step_loss)


def _rollout_halts(model, train, steps, key=None):
    inputs, labels, ids = tiny_batch(model.config)
    carry = model.initial_carry(3)
    halted = []
    for s in range(steps):
        k = None if key is None else jax.random.fold_in(key, s)
        carry, _ = _act_step(model, carry, inputs, labels, ids, train=train, key=k)
        halted.append(np.asarray(carry.halted))
    return np.stack(halted), carry


def test_eval_never_halts_early_even_when_q_says_halt():
    model = _with_q_bias(tiny_model(tiny_config()), 5.0)
    halted, carry = _rollout_halts(model, train=False, steps=4)
    assert not halted[:3].any() and halted[3].all()
    np.testing.assert_array_equal(carry.steps, 4)


def test_train_halts_on_positive_q_halt():
    halted, _ = _rollout_halts(_with_q_bias(tiny_model(tiny_config()), 5.0), train=True, steps=1)
    assert halted[0].all()
    halted, _ = _rollout_halts(_with_q_bias(tiny_model(tiny_config()), -5.0), train=True, steps=4)
    assert not halted[:3].any() and halted[3].all()


def test_train_halts_on_q_halt_above_q_continue_without_no_act_continue():
    model = _with_q_bias(tiny_model(tiny_config(no_ACT_continue=False)), -1.0)  # halt < cont
    halted, _ = _rollout_halts(model, train=True, steps=2)
    assert not halted.any()
    model = _with_q_bias(tiny_model(tiny_config(no_ACT_continue=False)), 0.5)
    halted, _ = _rollout_halts(model, train=True, steps=1)
    assert halted.all()


def test_exploration_enforces_minimum_steps():
    config = tiny_config(halt_exploration_prob=1.0, halt_max_steps=6)
    model = _with_q_bias(tiny_model(config), 5.0)  # would halt at step 1 without exploration
    min_steps = model.exploration_min_steps(jax.random.key(3), 4096)
    assert int(min_steps.min()) == 2 and int(min_steps.max()) == 6
    halted, _ = _rollout_halts(model, train=True, steps=1, key=jax.random.key(0))
    assert not halted.any()
    half = _with_q_bias(tiny_model(dataclasses.replace(config, halt_exploration_prob=0.5)), 5.0)
    explored = np.asarray(half.exploration_min_steps(jax.random.key(1), 20000) > 0)
    assert abs(explored.mean() - 0.5) < 0.02


def test_halted_rows_take_new_batch_and_restart():
    config = tiny_config()
    model = tiny_model(config)
    a, b = tiny_batch(config, seed=1), tiny_batch(config, seed=2)
    carry, _ = model(model.initial_carry(3), *a, train=False)
    carry = eqx.tree_at(lambda c: c.halted, carry, jnp.array([True, False, True]))
    reset = model.reset(carry, *b)
    np.testing.assert_array_equal(reset.inputs[0], b[0][0])
    np.testing.assert_array_equal(reset.inputs[1], a[0][1])
    np.testing.assert_array_equal(reset.steps, [0, 1, 0])
    np.testing.assert_array_equal(reset.z_H[0, 3], model.H_init)
    np.testing.assert_array_equal(reset.z_L[1], carry.z_L[1])


def _loss_of_carry(model, z_H, z_L, batch):
    carry = model.reset(model.initial_carry(3), *batch)
    carry = eqx.tree_at(lambda c: (c.z_H, c.z_L, c.halted), carry,
                        (z_H, z_L, jnp.zeros(3, bool)))
    return _jit_step_loss(model, carry, train=False)[0]


@pytest.mark.parametrize("arch", ["trm", "trm_singlez"])
def test_no_gradient_through_no_grad_cycles(arch):
    config = tiny_config(H_cycles=3, arch=arch)
    model, batch = tiny_model(config), tiny_batch(config)
    z = jnp.ones((3, config.total_len, config.hidden_size))
    g_H, g_L = jax.grad(lambda a, b: _loss_of_carry(model, a, b, batch), argnums=(0, 1))(z, z)
    assert np.all(g_H == 0) and np.all(g_L == 0)
    # Control: with a single H cycle the incoming latents feed the gradient cycle directly.
    model1 = replace_config(model, dataclasses.replace(config, H_cycles=1))
    g_L1 = jax.grad(lambda b: _loss_of_carry(model1, z, b, batch))(z)
    assert np.abs(g_L1).max() > 0


def test_no_gradient_into_previous_carry():
    """Even with H_cycles=1, the carry handed to the next step is detached."""
    config = tiny_config(H_cycles=1)
    model, batch = tiny_model(config), tiny_batch(config)
    z = jnp.ones((3, config.total_len, config.hidden_size))

    def second_step_loss(z_L):
        carry = model.reset(model.initial_carry(3), *batch)
        carry = eqx.tree_at(lambda c: c.z_L, carry, z_L)
        carry, _ = model.step(carry, train=False)
        return step_loss(model, carry, train=False)[0]

    assert np.all(jax.grad(second_step_loss)(z) == 0)


def test_weight_gradient_only_from_last_cycle():
    """Gradients with H_cycles=3 equal those of one gradient cycle started from the latents
    that two frozen cycles produce."""
    config = tiny_config(H_cycles=3)
    model, batch = tiny_model(config), tiny_batch(config)
    carry = model.reset(model.initial_carry(3), *batch)
    @eqx.filter_jit
    def loss(m, c):
        diff, static = eqx.partition(m, network_filter(m))
        return jax.grad(lambda d: step_loss(eqx.combine(d, static), c, train=False)[0])(diff)

    full = loss(model, carry)
    # Run the two frozen cycles by hand, then one cycle with gradient.
    x = model.embed(carry.inputs, model.puzzle_rows(carry.puzzle_identifiers))
    rope = model.rope()
    z_H, z_L = carry.z_H, carry.z_L
    for _ in range(2):
        z_H, z_L = eqx.filter_jit(model.latent_recursion)(x, z_H, z_L, rope)
    started = eqx.tree_at(lambda c: (c.z_H, c.z_L), carry, (z_H, z_L))
    last = loss(replace_config(model, dataclasses.replace(config, H_cycles=1)), started)
    # float32 rounding apart: max |a - b| / max |b| ~3e-6 here; a gradient through the
    # frozen cycles would differ by O(1)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(last)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-4 * np.abs(b).max())


@pytest.mark.parametrize("dtype,tol", [("bfloat16", 0.1), ("float16", 0.02)])
def test_low_precision_forward_tracks_float32(dtype, tol):
    config = tiny_config()
    model, batch = tiny_model(config), tiny_batch(config)
    low = replace_config(model, dataclasses.replace(config, forward_dtype=dtype))
    _, ref = model(model.initial_carry(3), *batch, train=False)
    carry, out = low(low.initial_carry(3), *batch, train=False)
    assert carry.z_H.dtype == jnp.dtype(dtype) and out.logits.dtype == jnp.dtype(dtype)
    assert model.lm_head.weight.dtype == jnp.float32
    err = np.abs(np.asarray(out.logits, np.float32) - ref.logits).max()
    assert err / np.abs(ref.logits).max() < tol


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_einsum_backward_keeps_the_dtype(dtype):
    """Below float32 every dot of `einsum`'s backward pass multiplies operands of the forward
    dtype (what XLA:CPU hands to YNNPACK / AMX), with the gradients of JAX's own transpose."""
    ka, kb, kw = jax.random.split(jax.random.key(0), 3)
    a = jax.random.normal(ka, (3, 5, 16), dtype)
    b = jax.random.normal(kb, (8, 16), dtype)
    w = jax.random.normal(kw, (3, 5, 8))

    def plain(sub, a, b):
        return jnp.einsum(sub, a, b, preferred_element_type=jnp.float32).astype(a.dtype)

    def loss(f):
        return lambda a, b: jnp.sum(f("...i,oi->...o", a, b).astype(jnp.float32) * w)

    grad = jax.jit(jax.grad(loss(einsum), argnums=(0, 1)))
    dots = re.findall(r"stablehlo\.dot_general .*: \((tensor<[^>]*>), (tensor<[^>]*>)\)",
                      grad.lower(a, b).as_text())
    assert len(dots) >= 2  # d/da, d/db (and the forward if XLA keeps it)
    short = {"bfloat16": "bf16", "float16": "f16"}[dtype]
    assert all(op.endswith(f"x{short}>") for pair in dots for op in pair), dots
    for got, want in zip(grad(a, b), jax.grad(loss(plain), argnums=(0, 1))(a, b)):
        assert got.dtype == jnp.dtype(dtype)
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                                   rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_gated_silu_is_the_float32_activation_rounded_once(dtype):
    """silu(gate) * up and its gradient (hand-written below float32): JAX's float32 values
    of the official formula, rounded once to the dtype."""
    kx, kc = jax.random.split(jax.random.key(0))
    x = (3 * jax.random.normal(kx, (4, 5, 64))).astype(dtype)
    ct = jax.random.normal(kc, (4, 5, 32)).astype(dtype)

    def official(x):
        gate, up = jnp.split(x, 2, axis=-1)
        return jax.nn.silu(gate) * up

    out, vjp = jax.vjp(jax.jit(gated_silu), x)
    want_out, want_vjp = jax.vjp(official, x.astype(jnp.float32))
    got, want = vjp(ct)[0], want_vjp(ct.astype(jnp.float32))[0]
    assert out.dtype == got.dtype == jnp.dtype(dtype)
    eps = float(jnp.finfo(dtype).eps)  # rounding once: within eps / 2 relative
    for a, b in ((out, want_out), (got, want)):
        np.testing.assert_allclose(np.asarray(a, np.float32), b, rtol=eps,
                                   atol=1e-6 * float(jnp.abs(b).max()))


@pytest.mark.parametrize("overrides", [{}, {"mlp_t": True, "pos_encodings": "none"},
                                       {"arch": "trm_hier6"}])
def test_rows_are_independent(overrides):
    """The batch-native network mixes nothing across rows: a batch gives each row's result
    alone."""
    config = tiny_config(**overrides)
    model, batch = tiny_model(config), tiny_batch(config)
    carry = model.reset(model.initial_carry(3), *batch)
    rows = model.puzzle_rows(carry.puzzle_identifiers)
    recurse = eqx.filter_jit(model.deep_recursion)
    whole = recurse(carry.z_H, carry.z_L, carry.inputs, rows)
    for i in (0, 2):
        alone = recurse(carry.z_H[i:i + 1], carry.z_L[i:i + 1], carry.inputs[i:i + 1],
                        rows[i:i + 1])
        for w, a in zip(whole, alone):  # equal up to float32 rounding (matmul blocking)
            assert np.abs(w[i:i + 1] - a).max() <= 1e-5 * np.abs(w).max()


def test_q_continue_target_definition():
    config = tiny_config(no_ACT_continue=False, halt_max_steps=2)
    model, batch = tiny_model(config), tiny_batch(config)
    carry = model.reset(model.initial_carry(3), *batch)
    step = eqx.filter_jit(lambda m, c: m.step(c, train=True))
    deep_recursion = eqx.filter_jit(lambda m, c: m.deep_recursion(
        c.z_H, c.z_L, carry.inputs, m.puzzle_rows(carry.puzzle_identifiers)))
    new, out = step(model, carry)
    q_next = deep_recursion(model, new)[3]
    expect = jax.nn.sigmoid(jnp.maximum(q_next[:, 0], q_next[:, 1]))  # step 1 < max 2
    np.testing.assert_allclose(out.target_q_continue, expect, rtol=1e-6)
    new2, out2 = step(model, new)  # last step: the halt logit alone
    q_last = deep_recursion(model, new2)[3]
    np.testing.assert_allclose(out2.target_q_continue, jax.nn.sigmoid(q_last[:, 0]), rtol=1e-6)
    assert model.step(carry, train=False)[1].target_q_continue is None


def test_single_z_reads_outputs_from_z_L():
    config = tiny_config(arch="trm_singlez")
    model = tiny_model(config)
    carry, out = model(model.initial_carry(3), *tiny_batch(config), train=False)
    np.testing.assert_array_equal(carry.z_H, carry.z_L)
    logits = model.lm_head(carry.z_L)[:, config.prefix_len:]
    np.testing.assert_allclose(out.logits, logits, rtol=1e-6)


def test_remat_gives_the_same_gradients():
    config = tiny_config()
    model, batch = tiny_model(config), tiny_batch(config)
    model = replace_config(model, dataclasses.replace(config, remat=False))
    remat = replace_config(model, dataclasses.replace(config, remat=True))

    def grads(m):
        carry = m.reset(m.initial_carry(3), *batch)
        diff, static = eqx.partition(m, network_filter(m))
        return jax.grad(lambda d: step_loss(eqx.combine(d, static), carry, train=False)[0])(diff)

    for a, b in zip(jax.tree.leaves(grads(model)), jax.tree.leaves(grads(remat))):
        # recomputation lets XLA fuse differently: equal up to float32 rounding
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("overrides", [{"mlp_t": True, "pos_encodings": "none"},
                                       pytest.param({}, marks=pytest.mark.slow)])
def test_bfloat16_gradients_track_float32(overrides):
    """The bfloat16 backward (bf16 operands, float32 accumulation) compiles, runs on this
    backend and gives the float32 gradients up to bfloat16 rounding (compounded through the
    recursion: ~10% of the norm here, ~100% for a wrong transpose)."""
    config = tiny_config(H_cycles=1, L_cycles=1, **overrides)
    model, batch = tiny_model(config), tiny_batch(config)

    @eqx.filter_jit
    def grads(m):
        carry = m.reset(m.initial_carry(3), *batch)
        diff, static = eqx.partition(m, network_filter(m))
        return jax.grad(lambda d: step_loss(eqx.combine(d, static), carry, train=False)[0])(diff)

    low = replace_config(model, dataclasses.replace(config, forward_dtype="bfloat16"))
    ref, got = jax.tree.leaves(grads(model)), jax.tree.leaves(grads(low))
    assert all(g.dtype == jnp.float32 for g in got)
    err = sum(float(jnp.sum(jnp.square(a - b))) for a, b in zip(ref, got))
    assert err <= 0.3**2 * sum(float(jnp.sum(jnp.square(a))) for a in ref)
