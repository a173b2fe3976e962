"""Evaluation throughput: puzzles/s of the eval rollout (every puzzle runs all halt_max_steps
supervision steps), through the same path as `python evaluate.py` (batches sharded on the
data-parallel mesh, results read back to the host).

    python bench/eval_throughput.py [--hidden 512] [--batch 64] [--batches 3] [--steps 16]
                                    [--variant mlp_t attention] [--dtype float32] [--devices N]
                                    [--cpu-devices 0]

Sudoku shapes (seq 81, vocab 11, 16 puzzle-embedding positions), H_cycles 3, L_cycles 6,
2 layers; random weights (throughput does not depend on them).
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np
from train_step import (
    add_device_flags,
    matmul_flops_per_second,
    network_call_flops,
    split_host,
)

from trm.cli import positive_int, run_cli
from trm.config import ModelConfig
from trm.eval_run import evaluate_stream
from trm.models import build_model
from trm.train_step import make_mesh


def rollout_flops(c: ModelConfig) -> float:
    """Matmul FLOPs of one puzzle's eval rollout (forward only)."""
    per_step = c.H_cycles * (c.L_cycles + 1) * network_call_flops(c)
    return c.halt_max_steps * (per_step + 2 * c.total_len * c.hidden_size * (c.vocab_size + 2))


def bench(config: ModelConfig, batch: int, batches: int, devices: int | None
          ) -> dict[str, float]:
    mesh = make_mesh(devices)
    model = build_model(config, key=jax.random.key(0))
    rng = np.random.default_rng(0)
    data = {"inputs": rng.integers(1, 11, (batch, config.seq_len), dtype=np.int32),
            "labels": rng.integers(2, 11, (batch, config.seq_len), dtype=np.int32),
            "puzzle_identifiers": np.zeros((batch,), np.int32)}
    start = time.perf_counter()
    evaluate_stream(model, [data], mesh)                  # compile + one batch
    first_s = time.perf_counter() - start
    result = evaluate_stream(model, [data] * batches, mesh)
    per_s = result.puzzles / result.seconds
    return {"first_s": first_s, "puzzles_per_s": per_s,
            "flops_per_s": per_s * rollout_flops(config), "devices": mesh.devices.size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=positive_int, default=512)
    parser.add_argument("--batch", type=positive_int, default=64)
    parser.add_argument("--batches", type=positive_int, default=3, help="timed batches")
    parser.add_argument("--steps", type=positive_int, default=16, help="halt_max_steps")
    parser.add_argument("--variant", nargs="+", default=["mlp_t", "attention"],
                        choices=["mlp_t", "attention"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    add_device_flags(parser)
    args = parser.parse_args()
    devices = split_host(args)
    peak = matmul_flops_per_second()
    print(f"backend={jax.default_backend()} devices={devices} "
          f"batch={args.batch} dtype={args.dtype} hidden={args.hidden} steps={args.steps}; "
          f"probe (one 2048 x 2048 float32 matmul, one device): {peak / 1e9:.1f} GFLOP/s")
    for variant in args.variant:
        mlp_t = variant == "mlp_t"
        config = ModelConfig(vocab_size=11, seq_len=81, num_puzzle_identifiers=1,
                             hidden_size=args.hidden, num_heads=max(1, args.hidden // 64),
                             H_cycles=3, L_cycles=6, halt_max_steps=args.steps, mlp_t=mlp_t,
                             pos_encodings="none" if mlp_t else "rope", forward_dtype=args.dtype)
        r = bench(config, args.batch, args.batches, args.devices)
        print(f"{variant:9s} compile + first batch {r['first_s']:7.1f} s; then "
              f"{r['puzzles_per_s']:9.2f} puzzles/s  {r['flops_per_s'] / 1e9:7.1f} GFLOP/s "
              f"({r['flops_per_s'] / peak:.2f}x the probe matmul's rate)")


if __name__ == "__main__":
    sys.exit(run_cli(lambda _: main(), sys.argv[1:]))  # bad input: one `error:` line
