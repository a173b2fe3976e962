"""Loss head: stablemax/softmax CE, BCE, totals and metric sums on constructed outputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config, tiny_model

from trm.loss import IGNORE_LABEL_ID, bce_with_logits, log_stablemax, loss_head, token_cross_entropy
from trm.models import Carry, Outputs


def _reference_log_stablemax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    s = np.where(x < 0, 1 / (1 - x + 1e-30), x + 1)
    return np.log(s / s.sum(-1, keepdims=True))


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
def test_stablemax_matches_float64_reference(scale):
    x = np.random.default_rng(0).normal(size=(64, 11)).astype(np.float32) * scale
    ours = np.asarray(log_stablemax(jnp.asarray(x)))
    np.testing.assert_allclose(ours, _reference_log_stablemax(x), rtol=2e-6, atol=2e-6)


def test_stablemax_is_finite_with_finite_gradients_at_extremes():
    x = jnp.array([[-3e38, -1.0, 0.0, 1.0, 3e37]], jnp.float32)
    labels = jnp.array([[1]])
    ce = token_cross_entropy(x[:, None, :], labels, "stablemax")
    assert np.isfinite(ce).all()
    g = jax.grad(lambda v: token_cross_entropy(v[:, None, :], labels, "stablemax").sum())(x)
    assert np.isfinite(g).all()


def test_softmax_ce_and_ignored_labels():
    logits = jax.random.normal(jax.random.key(0), (2, 3, 5))
    labels = jnp.array([[0, 4, IGNORE_LABEL_ID], [IGNORE_LABEL_ID] * 3])
    ce = np.asarray(token_cross_entropy(logits, labels, "softmax"))
    expect = -jax.nn.log_softmax(logits)[0, [0, 1], [0, 4]]
    np.testing.assert_allclose(ce[0, :2], expect, rtol=1e-6)
    assert ce[0, 2] == 0 and np.all(ce[1] == 0)


def test_bce_with_logits_formula():
    x = jnp.array([-30.0, -2.0, 0.0, 3.0, 20.0])
    t = jnp.array([1.0, 0.0, 1.0, 0.3, 0.0])
    p = 1 / (1 + np.exp(-np.asarray(x, np.float64)))
    ref = -(t * np.log(p) + (1 - t) * np.log1p(-p))
    np.testing.assert_allclose(bce_with_logits(x, t), ref, rtol=1e-5)


def _constructed(halted, steps, q_halt, target=None):
    """4 rows x 3 tokens, vocab 3. Row 0 exactly right, row 1 one of two labelled tokens right,
    row 2 exactly right, row 3 unlabelled."""
    labels = jnp.array([[0, 1, 2], [2, 2, IGNORE_LABEL_ID], [1, 1, 1], [IGNORE_LABEL_ID] * 3])
    preds = jnp.array([[0, 1, 2], [2, 0, 0], [1, 1, 1], [0, 0, 0]])
    logits = 5.0 * jax.nn.one_hot(preds, 3)
    z = jnp.zeros((4, 1, 1))
    carry = Carry(z_H=z, z_L=z, steps=jnp.array(steps), halted=jnp.array(halted),
                  inputs=labels, labels=labels, puzzle_identifiers=jnp.zeros(4, jnp.int32))
    q = jnp.array(q_halt, jnp.float32)
    return carry, Outputs(logits, q, jnp.zeros(4), None if target is None else jnp.array(target))


def test_metrics_count_only_halted_labelled_rows():
    carry, out = _constructed([True, True, False, True], [2, 3, 1, 4], [1.0, 1.0, 1.0, -1.0])
    total, m = loss_head(carry, out, "stablemax")
    assert float(m["count"]) == 2  # rows 0, 1 (row 2 not halted, row 3 no labels)
    assert float(m["accuracy"]) == pytest.approx(1.0 + 0.5)
    assert float(m["exact_accuracy"]) == 1
    assert float(m["q_halt_accuracy"]) == 1  # row 0: q>=0 and correct; row 1: q>=0, wrong
    assert float(m["steps"]) == 5
    # losses use every row, halted or not
    lm = token_cross_entropy(out.logits, carry.labels, "stablemax")
    divisor = np.array([3, 2, 3, 1])[:, None]
    assert float(m["lm_loss"]) == pytest.approx(float((lm / divisor).sum()), rel=1e-6)
    correct = np.array([1.0, 0.0, 1.0, 1.0])  # an unlabelled row counts as exactly correct
    qh = float(bce_with_logits(out.q_halt_logits, jnp.asarray(correct)).sum())
    assert float(m["q_halt_loss"]) == pytest.approx(qh, rel=1e-6)
    assert float(total) == pytest.approx(float(m["lm_loss"]) + 0.5 * qh, rel=1e-6)
    assert "q_continue_loss" not in m


def test_q_continue_term_enters_the_total():
    target = [0.2, 0.9, 0.5, 0.1]
    carry, out = _constructed([True] * 4, [1] * 4, [0.0] * 4, target)
    total, m = loss_head(carry, out, "softmax")
    qc = float(bce_with_logits(jnp.zeros(4), jnp.array(target)).sum())
    assert float(m["q_continue_loss"]) == pytest.approx(qc, rel=1e-6)
    expect = float(m["lm_loss"]) + 0.5 * (float(m["q_halt_loss"]) + qc)
    assert float(total) == pytest.approx(expect, rel=1e-6)


def test_loss_head_on_model_outputs_is_finite():
    config = tiny_config()
    model = tiny_model(config)
    carry = model.initial_carry(2)
    inputs = jnp.ones((2, config.seq_len), jnp.int32)
    carry, out = model(carry, inputs, inputs, jnp.array([0, 1]), train=False)
    total, metrics = loss_head(carry, out, "stablemax")
    assert np.isfinite(float(total)) and float(metrics["count"]) == 0  # none halted at step 1
