"""Training-step throughput: compile time, steps/s, examples/s, FLOP/s, peak RSS.

    python bench/train_step.py [--hidden 128 512] [--mixer attention mlp_t]
                               [--dtype float32 bfloat16] [--batch 32] [--steps 10] [--devices N]
                               [--cpu-devices 0]

Sudoku shapes (seq 81, vocab 11, 16 puzzle-embedding positions), H_cycles 3, L_cycles 6,
2 layers, attention (RoPE) and mlp_t. FLOPs are counted analytically from the matmuls (the
recursion runs H_cycles x (L_cycles + 1) network calls forward, and the last
L_cycles + 1 of them backward at twice the forward cost) and compared with the rate of one
float32 matmul on one device (the probe; a step split over several devices may exceed it). One line per config: median wall seconds per step (min, and
the process's CPU seconds, which load from other processes disturbs less), compile time;
compare against another implementation by ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from trm.cli import positive_int, run_cli
from trm.config import ModelConfig
from trm.models import build_model
from trm.models.layers import swiglu_intermediate_size
from trm.optim import adam_atan2
from trm.preflight import split_cpu
from trm.run_config import MeshConfig
from trm.train_step import (
    batch_sharding,
    init_train_state,
    jit_train_step,
    make_mesh,
    make_train_step,
    state_shardings,
)


def network_call_flops(c: ModelConfig) -> float:
    """Matmul FLOPs of one application of the reasoning network to one example."""
    L, D = c.total_len, c.hidden_size
    inter = swiglu_intermediate_size(D, c.expansion)
    mlp = 2 * L * D * 3 * inter  # gate_up (2 * inter) + down (inter)
    if c.mlp_t:
        mix = 2 * D * L * 3 * swiglu_intermediate_size(L, c.expansion)
    else:
        mix = 2 * L * D * 4 * D + 4 * L * L * D  # qkv + out projections, scores + values
    return c.L_layers * (mix + mlp)


def train_step_flops(c: ModelConfig, batch: int) -> float:
    calls_per_cycle = c.L_cycles + 1
    forward = c.H_cycles * calls_per_cycle * network_call_flops(c)
    backward = 2 * calls_per_cycle * network_call_flops(c)
    head = 3 * 2 * c.total_len * c.hidden_size * (c.vocab_size + 2)
    return batch * (forward + backward + head)


def matmul_flops_per_second(n: int = 2048, repeats: int = 5) -> float:
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        f(a).block_until_ready()
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def bench(config: ModelConfig, batch: int, steps: int, devices: int) -> dict[str, float]:
    """Compile the train step, run one warm-up step, then time `steps` steps one by one."""
    mesh = make_mesh(devices)
    optimizer = adam_atan2(1e-4, weight_decay=0.1)
    state = init_train_state(build_model(config, key=jax.random.key(0)), optimizer, batch,
                             jax.random.key(1), ema=True)
    state = jax.device_put(state, state_shardings(state, mesh))
    step = jit_train_step(make_train_step(
        mesh=mesh, optimizer=optimizer, lr_schedule=optax.constant_schedule(1e-4),
        puzzle_lr_schedule=optax.constant_schedule(1e-4), puzzle_weight_decay=0.1,
        ema_rate=0.999, global_batch=batch), state, mesh)
    rng = np.random.default_rng(0)
    data = {"inputs": rng.integers(1, 11, (batch, config.seq_len), dtype=np.int32),
            "labels": rng.integers(1, 11, (batch, config.seq_len), dtype=np.int32),
            "puzzle_identifiers": np.zeros((batch,), np.int32)}
    data = jax.device_put(data, batch_sharding(mesh))
    start = time.perf_counter()
    compiled = step.lower(state, data).compile()
    compile_s = time.perf_counter() - start
    state, metrics = compiled(state, data)
    jax.block_until_ready(metrics)
    wall, cpu = [], []
    for _ in range(steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        state, metrics = compiled(state, data)
        jax.block_until_ready(metrics)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
    seconds = statistics.median(wall)
    return {"compile_s": compile_s, "median_s": seconds, "min_s": min(wall),
            "cpu_s": statistics.median(cpu), "examples_per_s": batch / seconds,
            "flops_per_s": train_step_flops(config, batch) / seconds}


def bench_config(hidden: int, mlp_t: bool, dtype: str) -> ModelConfig:
    """Sudoku shapes, H_cycles 3, L_cycles 6, 2 layers; 4 heads at hidden 128, else 64-wide
    heads (the side-by-side configs: (a) attention 128, (b) mlp_t 128, (c) attention 512)."""
    return ModelConfig(vocab_size=11, seq_len=81, num_puzzle_identifiers=1001,
                       hidden_size=hidden, num_heads=4 if hidden == 128 else max(1, hidden // 64),
                       H_cycles=3, L_cycles=6, mlp_t=mlp_t,
                       pos_encodings="none" if mlp_t else "rope", forward_dtype=dtype)


def add_device_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", type=positive_int, default=None,
                        help="mesh size (default: all)")
    parser.add_argument("--cpu-devices", type=int, default=0,
                        help="at most this many XLA:CPU devices to split the host into, as "
                             "train.py's --mesh.cpu-devices (0: one per core dividing the batch)")


def split_host(args: argparse.Namespace) -> int:
    """The CPU device split of `train.py` (`trm.preflight.split_cpu`), before JAX starts; the
    mesh size. ValueError when --devices asks for more devices than there are, or --batch
    does not split over them (before any measurement)."""
    split_cpu(MeshConfig(cpu_devices=args.cpu_devices, data=args.devices or -1), args.batch)
    available = jax.device_count()
    if args.devices is not None and args.devices > available:
        raise ValueError(f"--devices {args.devices}: there are {available} device(s) "
                         "(on a CPU: --cpu-devices)")
    devices = args.devices or available
    if args.batch % devices:
        raise ValueError(f"--batch {args.batch} must be a multiple of the {devices} devices")
    return devices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=positive_int, nargs="+", default=[128, 512])
    parser.add_argument("--batch", type=positive_int, default=32)
    parser.add_argument("--steps", type=positive_int, default=10)
    add_device_flags(parser)
    parser.add_argument("--dtype", nargs="+", default=["float32"],
                        choices=["float32", "bfloat16"])
    parser.add_argument("--mixer", nargs="+", default=["attention", "mlp_t"],
                        choices=["attention", "mlp_t"])
    args = parser.parse_args()
    devices = split_host(args)
    peak = matmul_flops_per_second()
    print(f"backend={jax.default_backend()} devices={devices} batch={args.batch} "
          f"load={os.getloadavg()[0]:.1f}; probe (one 2048 x 2048 float32 matmul, one device): "
          f"{peak / 1e9:.1f} GFLOP/s")
    results = {}
    for hidden in args.hidden:
        for mixer in args.mixer:
            for dtype in args.dtype:
                r = bench(bench_config(hidden, mixer == "mlp_t", dtype), args.batch,
                          args.steps, args.devices)
                results[hidden, mixer, dtype] = r
                print(f"hidden={hidden:4d} {mixer:9s} {dtype:8s}: {r['median_s']:7.3f} s/step "
                      f"(min {r['min_s']:.3f}, cpu {r['cpu_s']:.3f})  compile "
                      f"{r['compile_s']:5.1f} s  {r['examples_per_s']:7.1f} ex/s  "
                      f"{r['flops_per_s'] / 1e9:6.1f} GFLOP/s "
                      f"({r['flops_per_s'] / peak:.2f}x the probe matmul's rate)", flush=True)
    for (hidden, mixer, dtype), r in results.items():
        if dtype == "bfloat16" and (hidden, mixer, "float32") in results:
            ratio = results[hidden, mixer, "float32"]["median_s"] / r["median_s"]
            print(f"hidden={hidden:4d} {mixer:9s} bfloat16 speed / float32 speed: {ratio:.2f}")
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {rss_mib:.0f} MiB")


if __name__ == "__main__":
    sys.exit(run_cli(lambda _: main(), sys.argv[1:]))  # bad input: one `error:` line
