"""`--scale cpu`: shrink any catalog config to a smoke run of a few steps on generated data.

What the experiments vary stays varied, in proportion: hidden size / 8 (heads kept; one head
width more where RoPE would get an odd head dim),
supervision steps / 4 (rounded up), global batch and lr reference batch / 256, training puzzles
/ 40 (at least 2) of generated 9x9 Sudoku. Layers, cycles, augmentation counts, dtypes,
optimiser and schedule settings are kept. The schedule spans about `steps` optimiser steps
with `evals` evaluations: optim.epochs and eval.eval_interval are derived from the scaled batch
and puzzle count, so they differ between runs that vary those two; max_steps stops runs whose
single epoch is longer (large training sets) at `steps`. The baseline becomes hidden 64, batch
3, 25 puzzles, evaluated at steps 8 and 16.
"""

from __future__ import annotations

import math

from sweeps.configs import override
from trm.run_config import RunConfig

HIDDEN_DIV, HALT_DIV, BATCH_DIV, PUZZLE_DIV = 8, 4, 256, 40
TEST_PUZZLES = 32
EVAL_BATCH = 32


def _shrink(value: int, div: int, minimum: int = 1) -> int:
    return max(minimum, round(value / div))


def scale_cpu(cfg: RunConfig, *, data_root: str, steps: int = 16, evals: int = 2) -> RunConfig:
    """`cfg` at CPU size (see the module docstring); generated data goes under data_root."""
    if steps < 1 or evals < 1:
        raise ValueError(f"steps and evals must be >= 1, got {steps}, {evals}")
    m, o = cfg.model, cfg.optim
    heads = m.num_heads
    hidden = max(heads, round(m.hidden_size / HIDDEN_DIV / heads) * heads)
    if m.pos_encodings == "rope" and (hidden // heads) % 2:  # RoPE needs an even head dim
        hidden += heads
    batch = _shrink(o.global_batch_size, BATCH_DIV)
    puzzles = _shrink(cfg.data.num_train, PUZZLE_DIV, 2)
    # epochs of `puzzles` examples each, so that the schedule spans >= steps updates
    interval = math.ceil(math.ceil(steps * batch / puzzles) / evals)
    return override(cfg, {
        "model.hidden_size": hidden,
        "model.halt_max_steps": math.ceil(m.halt_max_steps / HALT_DIV),
        "optim.global_batch_size": batch,
        "optim.lr_reference_batch": _shrink(o.lr_reference_batch, BATCH_DIV),
        "optim.lr_warmup_steps": max(1, steps // 8),
        "optim.epochs": interval * evals,
        "eval.eval_interval": interval,
        "eval.batch_size": EVAL_BATCH,
        "data.generate": "sudoku-tiny",
        "data.data_dir": f"{data_root}/sudoku-{puzzles}",
        "data.num_train": puzzles,
        "data.num_test": TEST_PUZZLES,
        "mesh.data": 1,
        "max_steps": steps,
    })
