"""Learning-rate schedule and step budget, as the official TRM `pretrain.py` computes them.

Step convention. The official loop increments `train_state.step` *before* asking for the
learning rate, so its first update uses `lr(step=1)`. Our schedules are optax schedules: they
take `count`, the number of updates already applied (0 for the first update, the optax
convention), and return the official `lr(step=count + 1)`. Both the network optimizer and the
puzzle-embedding sign-SGD use this schedule, each with its own base learning rate.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int


def total_steps(epochs: int, total_groups: int, mean_puzzle_examples: float,
                global_batch_size: int) -> int:
    """Official step budget: int(epochs * total_groups * mean_puzzle_examples / global_batch).

    `total_groups` and `mean_puzzle_examples` come from the training set's metadata. The
    official loop skips the optimizer for any batch past this budget.
    """
    return int(epochs * total_groups * mean_puzzle_examples / global_batch_size)


def warmup_cosine_lr(step: int, *, base_lr: float, warmup_steps: int, total_steps: int,
                     min_ratio: float = 1.0) -> float:
    """Learning rate at official (1-based) `step`, in Python floats (for logs and checks).

    Linear warm-up `base_lr * step / warmup_steps` for step < warmup_steps, then half a cosine
    from `base_lr` (at step == warmup_steps) down to `base_lr * min_ratio` (at total_steps).
    """
    if step < warmup_steps:
        return base_lr * step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    cosine = max(0.0, (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))
    return base_lr * (min_ratio + cosine)


def warmup_cosine(base_lr: float, warmup_steps: int, total_steps: int,
                  min_ratio: float = 1.0) -> optax.Schedule:
    """Optax schedule: `count` (updates done, from 0) -> the official lr of step `count + 1`.

    jit-friendly (float32 arithmetic); `min_ratio=1.0` gives a constant lr after warm-up.
    """
    if warmup_steps < 0 or total_steps < 0:
        raise ValueError(f"warmup_steps and total_steps must be >= 0, got "
                         f"{warmup_steps}, {total_steps}")
    warm_div = float(max(1, warmup_steps))
    cos_div = float(max(1, total_steps - warmup_steps))

    def schedule(count: Int[Array, ""] | int) -> Float[Array, ""]:
        step = jnp.asarray(count).astype(jnp.float32) + 1.0
        warm = base_lr * step / warm_div
        progress = (step - warmup_steps) / cos_div
        cosine = jnp.maximum(0.0, (1.0 - min_ratio) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress)))
        return jnp.where(step < warmup_steps, warm, base_lr * (min_ratio + cosine))

    return schedule
