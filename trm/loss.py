"""ACT loss head: cross-entropy on the answer, BCE on the halting (and continue) logits, metrics.

Losses and metrics are *sums* over the batch (the official convention); the train step divides
the total by the global batch size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from trm.config import LossType
from trm.models import ACTModel, Carry, Outputs

IGNORE_LABEL_ID = -100

Metrics = dict[str, Float[Array, ""]]


def log_stablemax(logits: Float[Array, "*batch V"]) -> Float[Array, "*batch V"]:
    """log(s(x) / sum s(x)) with s(x) = 1/(1-x) for x < 0 else x + 1, stable in float32.

    log s(x) is evaluated as -log1p(-x) or log1p(x), so neither branch can overflow.
    """
    x = logits.astype(jnp.float32)
    neg, pos = jnp.minimum(x, 0.0), jnp.maximum(x, 0.0)
    s = jnp.where(x < 0, 1.0 / (1.0 - neg), pos + 1.0)
    log_s = jnp.where(x < 0, -jnp.log1p(-neg), jnp.log1p(pos))
    return log_s - jnp.log(jnp.sum(s, axis=-1, keepdims=True))


def token_cross_entropy(logits: Float[Array, "*batch V"], labels: Int[Array, "*batch"],
                        loss_type: LossType) -> Float[Array, "*batch"]:
    """Per-token CE (stablemax or softmax); 0 where the label is IGNORE_LABEL_ID."""
    if loss_type == "stablemax":
        logprobs = log_stablemax(logits)
    else:
        logprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    mask = labels != IGNORE_LABEL_ID
    safe = jnp.where(mask, labels, 0)
    picked = jnp.take_along_axis(logprobs, safe[..., None], axis=-1)[..., 0]
    return -jnp.where(mask, picked, 0.0)


def bce_with_logits(logits: Float[Array, "*b"], targets: Float[Array, "*b"]) -> Float[Array, "*b"]:
    """Elementwise binary cross-entropy on logits (numerically stable form)."""
    return jnp.maximum(logits, 0.0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def row_correctness(logits: Float[Array, "B S V"], labels: Int[Array, "B S"],
                    ) -> tuple[Bool[Array, "B S"], Int[Array, " B"], Bool[Array, " B"]]:
    """(token correct & labelled, labelled-token count, whole row exactly correct)."""
    mask = labels != IGNORE_LABEL_ID
    counts = mask.sum(-1)
    correct = mask & (jnp.argmax(logits, axis=-1) == labels)
    return correct, counts, correct.sum(-1) == counts


RowMetrics = dict[str, Float[Array, " B"]]


def row_metrics(labels: Int[Array, "B S"], outputs: Outputs, steps: Int[Array, " B"],
                loss_type: LossType) -> tuple[RowMetrics, Bool[Array, " B"]]:
    """Per-row metrics of one ACT step and which rows are labelled (have any label).

    accuracy: fraction of the row's labelled tokens right; exact_accuracy: 1 when all are;
    q_halt_accuracy: 1 when (q_halt >= 0) agrees with exactness; steps: supervision steps
    spent; lm_loss: mean token cross-entropy; q_halt_loss: BCE of q_halt against exactness;
    q_continue_loss: BCE against the Q-continue target (only when there is one).
    """
    correct, counts, seq_correct = row_correctness(outputs.logits, labels)
    divisor = jnp.maximum(counts, 1)[:, None]
    f32 = jnp.float32
    q_halt = outputs.q_halt_logits
    rows = {
        "accuracy": correct.sum(-1) / divisor[:, 0],      # one rounding: order-independent
        "exact_accuracy": seq_correct.astype(f32),
        "q_halt_accuracy": ((q_halt >= 0) == seq_correct).astype(f32),
        "steps": steps.astype(f32),
        "lm_loss": (token_cross_entropy(outputs.logits, labels, loss_type) / divisor).sum(-1),
        "q_halt_loss": bce_with_logits(q_halt, seq_correct.astype(f32)),
    }
    if outputs.target_q_continue is not None:
        rows["q_continue_loss"] = bce_with_logits(outputs.q_continue_logits,
                                                  outputs.target_q_continue)
    return rows, counts > 0


# metrics averaged over halted, labelled rows; the losses are sums over every row
COUNTED = ("accuracy", "exact_accuracy", "q_halt_accuracy", "steps")


def loss_head(carry: Carry, outputs: Outputs, loss_type: LossType, step_penalty: float = 0.0,
              ) -> tuple[Float[Array, ""], Metrics]:
    """Total loss lm + 0.5 * (q_halt + q_continue) and metric sums over halted, labelled rows.

    As official, the losses sum over every row (a padding row's q_halt BCE included; training
    batches have no padding; evaluation reports `row_metrics` of labelled rows instead).
    `step_penalty` > 0 makes halting compute-aware: each row adds
    step_penalty * steps * BCE(q_halt, 1), a push towards halting that grows with the number of
    supervision steps already spent (0 reproduces the official loss).
    """
    rows, labelled = row_metrics(carry.labels, outputs, carry.steps, loss_type)
    lm_loss = jnp.sum(rows["lm_loss"])
    q_halt_loss = jnp.sum(rows["q_halt_loss"])
    if step_penalty:
        q_halt = outputs.q_halt_logits
        q_halt_loss = q_halt_loss + step_penalty * jnp.sum(
            carry.steps * bce_with_logits(q_halt, jnp.ones_like(q_halt)))
    q_continue_loss = jnp.sum(rows.get("q_continue_loss", jnp.zeros((), jnp.float32)))
    total = lm_loss + 0.5 * (q_halt_loss + q_continue_loss)

    valid = carry.halted & labelled
    metrics = {"count": valid.sum().astype(jnp.float32)}
    metrics |= {k: jnp.sum(jnp.where(valid, rows[k], 0.0)) for k in COUNTED}
    metrics |= {"lm_loss": jax.lax.stop_gradient(lm_loss),
                "q_halt_loss": jax.lax.stop_gradient(q_halt_loss)}
    if "q_continue_loss" in rows:
        metrics["q_continue_loss"] = jax.lax.stop_gradient(q_continue_loss)
    return total, metrics


def step_loss(model: ACTModel, carry: Carry, *, train: bool, key: PRNGKeyArray | None = None,
              puzzle_rows: Float[Array, "B pdim"] | None = None,
              min_halt_steps: Int[Array, " B"] | None = None, step_penalty: float = 0.0,
              ) -> tuple[Float[Array, ""], tuple[Carry, Metrics, Outputs]]:
    """One ACT step on a reset carry followed by the loss head (differentiable in model, rows)."""
    new_carry, outputs = model.step(carry, train=train, key=key, puzzle_rows=puzzle_rows,
                                    min_halt_steps=min_halt_steps)
    total, metrics = loss_head(new_carry, outputs, model.config.loss_type, step_penalty)
    return total, (new_carry, metrics, outputs)
