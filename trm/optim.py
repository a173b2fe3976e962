"""Optimizers of the official TRM recipe: AdamATan2 for the network, sign-SGD for puzzle rows.

Parameter groups in the official `pretrain.py`:
- the network (every `nn.Parameter`: token embedding, blocks, lm_head, q_head weight *and*
  bias) gets AdamATan2 with `weight_decay` on all of it, no exclusions;
- the puzzle-embedding table is a buffer, trained only by the sign-SGD of
  `sign_sgd_rows` with its own lr (`puzzle_emb_lr`, same warm-up/cosine shape) and decay;
- H_init / L_init are buffers: never optimised, never averaged.
With `puzzle_emb_ndim == 0` only the network optimizer exists; with `freeze_weights` only the
sign-SGD runs (network untouched, no decay). `trm.models.network_filter` selects the network
leaves: `net, rest = eqx.partition(model, network_filter(model))`, and the optimizers here act
on `net` (None leaves are skipped).

EMA: `ema_init` at step 0 (the official helper registers the freshly built/loaded weights),
then `ema_update` after every step; evaluation uses the averaged network with the *current*
puzzle table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int, PyTree, ScalarLike

from trm.run_config import OptimConfig
from trm.schedule import warmup_cosine

T = TypeVar("T")
LearningRate = float | optax.Schedule


class AdamATan2State(NamedTuple):
    """count: updates applied so far; mu/nu: first and second moments (like the params)."""

    count: Int[Array, ""]
    mu: optax.Updates
    nu: optax.Updates


def _lr_at(learning_rate: LearningRate, count: Int[Array, ""]) -> Float[Array, ""]:
    lr = learning_rate(count) if callable(learning_rate) else learning_rate
    return jnp.asarray(lr, jnp.float32)


def _lerp(start: Array, end: Array, weight: float) -> Array:
    """start + weight * (end - start), in the adam-atan2 kernel's order: (s - w*s) + w*e."""
    return (start - weight * start) + weight * end


def adam_atan2(learning_rate: LearningRate, b1: float = 0.9, b2: float = 0.95,
               weight_decay: float = 0.0) -> optax.GradientTransformation:
    """AdamATan2 (the `adam-atan2` package used by TRM), as an optax transformation.

    For t = count + 1 and lr = learning_rate(count):
        p <- p * (1 - lr * wd)
        m <- lerp(m, g, 1 - b1);  v <- lerp(v, g * g, 1 - b2)
        p <- p - (lr / (1 - b1^t)) * atan2(m, sqrt(v) / sqrt(1 - b2^t))
    No epsilon: atan2 is bounded. The returned update is `p_new - p`, so that
    `optax.apply_updates` reproduces `p_new` exactly (Sterbenz) rather than re-rounding the
    decay and the step separately. Needs `params` in `update`.
    """
    one_minus_b1, one_minus_b2 = 1.0 - b1, 1.0 - b2

    def init_fn(params: optax.Params) -> AdamATan2State:
        return AdamATan2State(count=jnp.zeros([], jnp.int32),
                              mu=optax.tree.zeros_like(params),
                              nu=optax.tree.zeros_like(params))

    def update_fn(updates: optax.Updates, state: AdamATan2State,
                  params: optax.Params | None = None) -> tuple[optax.Updates, AdamATan2State]:
        if params is None:
            raise ValueError("adam_atan2 needs the current params (weight decay)")
        lr = _lr_at(learning_rate, state.count)
        t = (state.count + 1).astype(jnp.float32)
        step_size = lr / (1.0 - jnp.power(b1, t))
        bc2_sqrt = jnp.sqrt(1.0 - jnp.power(b2, t))
        decay = 1.0 - lr * weight_decay
        mu = jax.tree.map(lambda m, g: _lerp(m, g, one_minus_b1), state.mu, updates)
        nu = jax.tree.map(lambda v, g: _lerp(v, g * g, one_minus_b2), state.nu, updates)

        def delta(p: Array, m: Array, v: Array) -> Array:
            new_p = p * decay - step_size * jnp.arctan2(m, jnp.sqrt(v) / bc2_sqrt)
            return (new_p - p).astype(p.dtype)

        new_updates = jax.tree.map(delta, params, mu, nu)
        return new_updates, AdamATan2State(count=state.count + 1, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def adamw(learning_rate: LearningRate, b1: float = 0.9, b2: float = 0.95,
          weight_decay: float = 0.0) -> optax.GradientTransformation:
    """optax AdamW with torch's eps (1e-8) and decoupled decay p -= lr * wd * p."""
    return optax.adamw(learning_rate, b1=b1, b2=b2, eps=1e-8, weight_decay=weight_decay)


def lion(learning_rate: LearningRate, b1: float = 0.9, b2: float = 0.95,
         weight_decay: float = 0.0) -> optax.GradientTransformation:
    """optax Lion with decoupled decay (Lion usually wants ~3-10x smaller lr than Adam)."""
    return optax.lion(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay)


OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adam_atan2": adam_atan2, "adamw": adamw, "lion": lion}


def build_schedules(cfg: OptimConfig, total_steps: int) -> tuple[optax.Schedule, optax.Schedule]:
    """(network schedule, puzzle-embedding schedule): same warm-up/cosine, own base lrs."""
    scale = lr_batch_scale(cfg)

    def make(base_lr: float) -> optax.Schedule:
        return warmup_cosine(base_lr * scale, cfg.lr_warmup_steps, total_steps, cfg.lr_min_ratio)
    return make(cfg.lr), make(cfg.puzzle_emb_lr)


def lr_batch_scale(cfg: OptimConfig) -> float:
    """(global_batch / reference)^p with p = 1/2 (sqrt), 1 (linear) or 0 (none)."""
    power = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}[cfg.lr_batch_scaling]
    return (cfg.global_batch_size / cfg.lr_reference_batch) ** power


def build_optimizer(cfg: OptimConfig, schedule: LearningRate) -> optax.GradientTransformation:
    """The network optimizer named by `cfg.optimizer`, or all-zero updates if `freeze_weights`.

    Apply it to the network leaves only (see the module docstring); the puzzle table is
    updated separately by `sign_sgd_rows` with the puzzle schedule.
    """
    if cfg.freeze_weights:
        return optax.set_to_zero()
    make = OPTIMIZERS[cfg.optimizer]
    return make(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)


def sign_sgd_rows(table: Float[Array, "ids dim"], ids: Int[Array, " batch"],
                  row_grads: Float[Array, "batch dim"], lr: ScalarLike,
                  weight_decay: ScalarLike) -> Float[Array, "ids dim"]:
    """Sign-SGD with decoupled decay on the table rows used by a batch.

    `row_grads[i]` is d(loss)/d(table[ids[i]]) for batch position i. Gradients of repeated ids
    are summed first (over batch positions only; no dense [ids, dim] gradient is built), then
    each used row becomes `p * (1 - lr * wd) - lr * sign(g_sum)`; unused rows are untouched
    (no decay). Duplicate ids scatter identical values. The official optimizer all-gathers
    ids and row gradients over data-parallel ranks first: pass the *global* batch here.
    """
    batch = ids.shape[0]
    first = jnp.argmax(ids[:, None] == ids[None, :], axis=1)  # first position of each id
    summed = jax.ops.segment_sum(row_grads, first, num_segments=batch)
    grads = summed[first]
    rows = table[ids]
    new_rows = rows * (1.0 - lr * weight_decay) - lr * jnp.sign(grads)
    return table.at[ids].set(new_rows.astype(table.dtype))


def ema_init(params: PyTree[Array | None]) -> PyTree[Array | None]:
    """EMA start: a *copy* of the network params (copies keep buffer donation safe)."""
    return jax.tree.map(jnp.copy, params)


def ema_update(ema_params: PyTree[Array | None], params: PyTree[Array | None],
               rate: float) -> PyTree[Array | None]:
    """ema <- (1 - rate) * params + rate * ema (official EMAHelper order), leafwise.

    Pass `rate` as a Python float: `1 - rate` is then formed in float64 like the official
    code. Whether EMA runs at all is the caller's switch (`OptimConfig.ema`).
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"EMA rate must be in [0, 1], got {rate}")
    return jax.tree.map(lambda e, p: (1.0 - rate) * p + rate * e, ema_params, params)
