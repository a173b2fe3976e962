"""Evaluation rollouts: every row runs exactly `halt_max_steps` supervision steps.

`rollout` is jit-compiled once per model config and runs data-parallel when its inputs are
sharded on the batch axis. Besides the official metric sums of the last step, it returns what
per-step analyses need: whether each row is exactly right after each step, its q_halt logit and
its halting margin.
"""

from __future__ import annotations

from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jaxtyping import Array, Bool, Float, Int

from trm.loss import RowMetrics, row_correctness, row_metrics
from trm.models import ACTModel
from trm.models.act import halt_margin


class Rollout(eqx.Module):
    """Result of an eval rollout on a batch of B rows over T = halt_max_steps steps."""

    rows: RowMetrics
    """Per-row metrics after the last step, each [B] (`trm.loss.row_metrics`)."""
    preds: Int[Array, "B S"]
    """Predicted tokens after the last step."""
    q_halt: Float[Array, "T B"]
    """q_halt logit after each step."""
    halt_margin: Float[Array, "T B"]
    """`trm.models.act.halt_margin` after each step: training would halt the row where > 0."""
    exact: Bool[Array, "T B"]
    """Row exactly right after each step."""
    labelled: Bool[Array, " B"]
    """Row has at least one label (padding rows do not)."""
    step_preds: Int[Array, "T B S"] | None = None
    """Predicted tokens after each step (only with keep_step_preds)."""


@eqx.filter_jit
def rollout(model: ACTModel, inputs: Int[Array, "B S"], labels: Int[Array, "B S"],
            puzzle_identifiers: Int[Array, " B"], keep_step_preds: bool = False) -> Rollout:
    """Run `halt_max_steps` eval-mode ACT steps from a fresh carry."""
    carry = model.initial_carry(inputs.shape[0])

    def one_step(carry, _):
        carry, out = model(carry, inputs, labels, puzzle_identifiers, train=False)
        _, _, exact = row_correctness(out.logits, carry.labels)
        preds = jnp.argmax(out.logits, axis=-1).astype(jnp.int32)
        return carry, (out, exact, preds)

    carry, (outs, exact, preds) = jax.lax.scan(one_step, carry, None,
                                               length=model.config.halt_max_steps)
    last = jax.tree.map(lambda x: x[-1], outs)
    rows, labelled = row_metrics(carry.labels, last, carry.steps, model.config.loss_type)
    margin = halt_margin(model.config, outs.q_halt_logits, outs.q_continue_logits)
    return Rollout(rows=rows, preds=preds[-1], q_halt=outs.q_halt_logits, halt_margin=margin,
                   exact=exact, labelled=labelled, step_preds=preds if keep_step_preds else None)


def host_array(x: Array) -> np.ndarray:
    """The whole of a (possibly multi-host, batch-sharded) array on this host."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def eval_metrics(rows: Mapping[str, np.ndarray], count: int) -> dict[str, float]:
    """Each per-row metric averaged (float64) over the `count` counted rows, plus count.

    rows: name -> [count] values of the labelled, non-padding rows in data set order. Padding
    rows, batch boundaries and device count do not enter. With no rows (a split whose outputs
    are unknown) nothing is measured: only count 0.
    """
    if not count:
        return {"count": 0.0}
    return {k: float(np.mean(v, dtype=np.float64)) for k, v in rows.items()} | {
        "count": float(count)}


def per_step_accuracy(exact: np.ndarray, margin: np.ndarray) -> dict[str, object]:
    """Inference-budget curves from per-step correctness of labelled rows.

    exact, margin: [T, N] (margin: `Rollout.halt_margin`). Returns the exact accuracy if every
    row stopped after step k (k = 1..T), and the adaptive policy that stops at the first step
    where the model's halting rule fires (margin > 0; else at T): its exact accuracy and mean
    number of steps. {} when there are no rows (nothing to measure).
    """
    steps, n = exact.shape
    if not n:
        return {}
    halts = margin > 0
    stop = np.where(halts.any(0), halts.argmax(0), steps - 1)  # 0-based step index
    adaptive_correct = exact[stop, np.arange(n)]
    return {
        "exact_accuracy_at_step": [float(x) for x in exact.mean(1)],
        "adaptive_exact_accuracy": float(adaptive_correct.mean()),
        "adaptive_mean_steps": float((stop + 1).mean()),
    }
