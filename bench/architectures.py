"""Compile time and train-step time of each architecture at its paper preset's size.

    python bench/architectures.py [--batch 32] [--steps 3] [--dtype float32]
                                  [--presets sudoku-extreme sudoku-extreme-hrm ...]

One shard_map train step (forward, backward, optimisers, EMA) on Sudoku shapes, the model of
each preset (`trm/run_config.py`), on one device, timed by `bench/train_step.py`'s `bench`
(median wall seconds, min, the process's CPU seconds); parameter counts exclude the puzzle
table and the initial-state vectors.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys

import jax
from train_step import bench

from trm.cli import positive_int, run_cli
from trm.models import build_model, network_filter
from trm.presets import PRESETS

DEFAULT = ("sudoku-extreme", "sudoku-extreme-attn", "sudoku-extreme-trm-singlez",
           "sudoku-extreme-trm-hier6", "sudoku-extreme-hrm", "sudoku-extreme-transformer")


def network_parameters(config) -> int:
    model = build_model(config, key=jax.random.key(0))
    spec = network_filter(model)
    return sum(math.prod(x.shape) for x, on in zip(jax.tree.leaves(model),
                                                   jax.tree.leaves(spec)) if on)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=positive_int, default=32)
    parser.add_argument("--steps", type=positive_int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--presets", nargs="+", default=list(DEFAULT), choices=sorted(PRESETS))
    args = parser.parse_args()
    print(f"backend={jax.default_backend()} batch={args.batch} dtype={args.dtype}")
    for name in args.presets:
        config = dataclasses.replace(PRESETS[name][1].model, forward_dtype=args.dtype)
        r = bench(config, args.batch, args.steps, 1)
        print(f"{name:28s} {config.arch:22s} {network_parameters(config) / 1e6:5.2f}M params  "
              f"compile {r['compile_s']:6.1f} s  step {r['median_s']:6.2f} s median "
              f"(min {r['min_s']:.2f} s, {r['cpu_s']:.2f} CPU-s)", flush=True)


if __name__ == "__main__":
    sys.exit(run_cli(lambda _: main(), sys.argv[1:]))  # bad input: one `error:` line
