"""Schedules over training used by the study: recursion-depth curriculum, annealed exploration.

A curriculum is a tuple of phases `(start_fraction, H_cycles, L_cycles)`; the phase whose
start fraction is the largest one <= step / total_steps is active. Changing phase changes the
model's static config, so the train step recompiles once per phase.
"""

from __future__ import annotations

import dataclasses
import itertools

import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int

from trm.config import ConfigError, ModelConfig

Phase = tuple[float, int, int]


def validate_phases(phases: tuple[Phase, ...]) -> None:
    """Phases must start at 0, increase strictly, and have positive cycle counts."""
    if not phases:
        return
    starts = [p[0] for p in phases]
    if starts[0] != 0.0 or any(b <= a for a, b in itertools.pairwise(starts)) or starts[-1] >= 1:
        raise ConfigError(f"must start at 0.0 and increase below 1.0, got starts {starts}",
                          field="phases")
    if any(h < 1 or l_ < 1 for _, h, l_ in phases):
        raise ConfigError("H_cycles and L_cycles must be >= 1", field="phases")


def phase_index(phases: tuple[Phase, ...], step: int, total_steps: int) -> int:
    """Index of the phase active at (0-based) `step` of `total_steps`."""
    fraction = step / max(total_steps, 1)
    return max(i for i, p in enumerate(phases) if p[0] <= fraction)


def phase_config(model: ModelConfig, phase: Phase) -> ModelConfig:
    _, h_cycles, l_cycles = phase
    return dataclasses.replace(model, H_cycles=h_cycles, L_cycles=l_cycles)


def linear_anneal(start: float, end: float, total_steps: int) -> optax.Schedule:
    """start -> end linearly over `total_steps` updates (then constant at end)."""
    def schedule(count: Int[Array, ""] | int) -> Float[Array, ""]:
        frac = jnp.clip(jnp.asarray(count, jnp.float32) / max(total_steps, 1), 0.0, 1.0)
        return jnp.asarray(start + (end - start) * frac, jnp.float32)
    return schedule
