"""Optimizers, schedule and EMA against independent numpy / closed-form references."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trm.optim import (
    _lerp,
    adam_atan2,
    build_optimizer,
    build_schedules,
    ema_init,
    ema_update,
    sign_sgd_rows,
)
from trm.run_config import OptimConfig
from trm.schedule import total_steps, warmup_cosine, warmup_cosine_lr


def _numpy_lr(step, base, warmup, total, min_ratio):
    """Closed-form official schedule at 1-based step (float64)."""
    if step < warmup:
        return base * step / warmup
    progress = (step - warmup) / (total - warmup)
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + np.cos(np.pi * progress)))


def _numpy_adam_atan2(p, grads, lrs, b1, b2, wd):
    """SPEC formula in float64 with the textbook EMA form of the moments."""
    p, m, v = p.astype(np.float64), np.zeros_like(p, np.float64), np.zeros_like(p, np.float64)
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        g = g.astype(np.float64)
        p = p * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr / (1 - b1**t) * np.arctan2(m, np.sqrt(v) / np.sqrt(1 - b2**t))
    return p


def test_lerp_matches_textbook_moment_update():
    rng = np.random.default_rng(0)
    m, g = rng.normal(size=(2, 1000)).astype(np.float32)
    for b in (0.9, 0.95):
        ours = np.asarray(_lerp(jnp.asarray(m), jnp.asarray(g), 1.0 - b))
        ref = b * m.astype(np.float64) + (1 - b) * g.astype(np.float64)
        # a float32 lerp is 2-3 roundings (fused or not, depending on the CPU), each within
        # half an ulp of its operands' magnitude: within 3 ulp of max(|m|, |g|) (measured:
        # 1.0); a weight 1e-3 off is 3e4 ulp off
        ulp = np.spacing(np.maximum(np.abs(m), np.abs(g))).astype(np.float64)
        assert np.all(np.abs(ours - ref) <= 3 * ulp)


def test_adam_atan2_matches_numpy_over_steps_with_schedule():
    rng = np.random.default_rng(1)
    b1, b2, wd, base, warmup, total = 0.9, 0.95, 0.5, 1e-2, 3, 10
    params = {"w": rng.normal(size=(4, 5)).astype(np.float32),
              "b": rng.normal(size=(5,)).astype(np.float32)}
    grads = [{k: rng.normal(size=v.shape).astype(np.float32) * 10.0**-s for k, v in params.items()}
             for s in range(8)]
    tx = adam_atan2(warmup_cosine(base, warmup, total, min_ratio=0.1), b1=b1, b2=b2,
                    weight_decay=wd)
    p = jax.tree.map(jnp.asarray, params)
    state = tx.init(p)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    for g in grads:
        updates, state = step(jax.tree.map(jnp.asarray, g), state, p)
        p = optax.apply_updates(p, updates)
    assert int(state.count) == len(grads)
    lrs = [_numpy_lr(t, base, warmup, total, 0.1) for t in range(1, len(grads) + 1)]
    for k, p0 in params.items():
        ref = _numpy_adam_atan2(p0, [g[k] for g in grads], lrs, b1, b2, wd)
        np.testing.assert_allclose(np.asarray(p[k]), ref, rtol=2e-6, atol=2e-7)


def test_adam_atan2_skips_none_leaves_of_a_partition():
    model = {"net": jnp.ones((3,)), "table": jnp.zeros((2, 2))}
    net, rest = eqx.partition(model, {"net": True, "table": False})
    tx = adam_atan2(1e-2, weight_decay=0.1)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, net), tx.init(net), net)
    new = eqx.combine(optax.apply_updates(net, updates), rest)
    assert new["table"] is model["table"]
    # step 1: decay then -lr * atan2(m, |g|*...) / (1 - b1) = -lr * atan2(0.1, 1) / 0.1
    expected = 1.0 * (1 - 1e-3) - 1e-2 * math.atan2(0.1, 1.0) / 0.1
    np.testing.assert_allclose(np.asarray(new["net"]), expected, rtol=1e-6)


@pytest.mark.parametrize("name", ["adam_atan2", "adamw", "lion"])
def test_build_optimizer_moves_weights_unless_frozen(name):
    params = {"w": jnp.ones((4,))}
    grads = {"w": jnp.full((4,), 0.5)}
    for frozen in (False, True):
        cfg = OptimConfig(optimizer=name, freeze_weights=frozen, lr_warmup_steps=0)
        sched, _ = build_schedules(cfg, total_steps=100)
        tx = build_optimizer(cfg, sched)
        updates, _ = tx.update(grads, tx.init(params), params)
        moved = bool(jnp.any(updates["w"] != 0))
        assert moved != frozen


def test_schedule_matches_closed_form_at_warmup_middle_end():
    base, warmup, total, ratio = 1e-3, 100, 1100, 0.1
    sched = jax.jit(warmup_cosine(base, warmup, total, ratio))
    expected = {0: base / 100,               # count 0 = official step 1 (after increment)
                49: base * 50 / 100,
                99: base,                    # step == warmup: start of the cosine
                599: base * (0.1 + 0.9 * 0.5),
                1099: base * 0.1}
    for count, lr in expected.items():
        np.testing.assert_allclose(float(sched(jnp.int32(count))), lr, rtol=1e-6)
        assert warmup_cosine_lr(count + 1, base_lr=base, warmup_steps=warmup,
                                total_steps=total, min_ratio=ratio) == pytest.approx(lr)
    const = warmup_cosine(2e-4, 10, 1000, 1.0)
    np.testing.assert_allclose([float(const(c)) for c in (9, 500, 999)], 2e-4, rtol=1e-6)


def test_schedules_share_shape_with_own_base_lr():
    cfg = OptimConfig(lr=1e-4, puzzle_emb_lr=1e-2, lr_warmup_steps=10)
    net, puzzle = build_schedules(cfg, total_steps=50)
    np.testing.assert_allclose(float(net(4)), 1e-4 * 5 / 10, rtol=1e-6)
    np.testing.assert_allclose(float(puzzle(4)), 1e-2 * 5 / 10, rtol=1e-6)


def test_total_steps_official_formula():
    assert total_steps(2, 10, 3.5, 4) == 17                 # int(17.5)
    assert total_steps(50000, 1, 1001.0, 768) == 65169      # int(65169.27...)


def _numpy_sign_sgd(table, ids, grads, lr, wd):
    table = table.astype(np.float64).copy()
    for i in np.unique(ids):
        g = grads[ids == i].astype(np.float64).sum(0)
        table[i] = table[i] * (1 - lr * wd) - lr * np.sign(g)
    return table


def test_sign_sgd_rows_sums_repeated_ids_first():
    rng = np.random.default_rng(2)
    table = rng.normal(size=(20, 4)).astype(np.float32)
    ids = np.array([3, 7, 3, 0, 7, 3, 19, 5], np.int32)
    grads = rng.normal(size=(8, 4)).astype(np.float32)
    grads[0], grads[2], grads[5] = 1.0, -3.0, 1.0   # id 3: per-row signs disagree, sum < 0
    lr, wd = 0.01, 0.5
    new = np.asarray(jax.jit(sign_sgd_rows)(jnp.asarray(table), jnp.asarray(ids),
                                            jnp.asarray(grads), lr, wd))
    ref = _numpy_sign_sgd(table, ids, grads, lr, wd)
    np.testing.assert_allclose(new, ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(new[3], table[3] * (1 - lr * wd) + lr, rtol=1e-6)
    unused = np.setdiff1d(np.arange(20), ids)
    np.testing.assert_array_equal(new[unused], table[unused])


def test_sign_sgd_rows_builds_no_dense_gradient():
    table = jnp.zeros((100_000, 8))
    jaxpr = jax.make_jaxpr(sign_sgd_rows)(table, jnp.arange(16, dtype=jnp.int32),
                                          jnp.ones((16, 8)), 0.1, 0.1)
    full = [e for e in jaxpr.eqns if any(getattr(v.aval, "shape", None) == table.shape
                                          for v in e.outvars)]
    assert [e.primitive.name for e in full] == ["scatter"]


def test_ema_matches_official_recurrence():
    rate = 0.9
    p0 = {"w": jnp.array([1.0, -2.0])}
    ema = ema_init(p0)
    assert ema["w"] is not p0["w"]
    ref = np.array([1.0, -2.0])
    for p in ([2.0, 0.0], [4.0, 1.0], [0.5, 3.0]):
        ema = ema_update(ema, {"w": jnp.array(p)}, rate)
        ref = (1 - rate) * np.array(p) + rate * ref
    np.testing.assert_allclose(np.asarray(ema["w"]), ref, rtol=1e-6)
    with pytest.raises(ValueError):
        ema_update(ema, ema, 1.5)
