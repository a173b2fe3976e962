"""XLA dot rates (GFLOP/s) of the training step's projections on this machine.

    python bench/matmul_rates.py [--rows 1552] [--hidden 128] [--dtype float32] [--seconds 2]
                                 [--start EPOCH_SECONDS]

For each projection of a layer (hidden -> qkv 3h, hidden -> out h, SwiGLU h -> 2i, i -> h) it
times the forward product x W^T, the input gradient g W and the weight gradient g^T x, the
last contracting over all `rows` (1552: one device's share of batch 32 x 97 positions on 2
devices). One device, one process: to see the rates with every core busy, as in a training
step split over the cores, start one copy per core at the same moment, e.g.

    t=$(( $(date +%s) + 10 )); for c in 0 1; do
      taskset -c $c python bench/matmul_rates.py --start $t & done; wait
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp

from trm.cli import positive_int, run_cli
from trm.models.layers import einsum, swiglu_intermediate_size


def rate(fn, args: tuple[jax.Array, ...], flops: float, seconds: float) -> float:
    """GFLOP/s of `fn(*args)` run back to back for `seconds` after one warm-up call."""
    fn(*args).block_until_ready()
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        fn(*args).block_until_ready()
        n += 1
    return flops * n / (time.perf_counter() - start) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=positive_int, default=1552)
    p.add_argument("--hidden", type=positive_int, default=128)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--seconds", type=float, default=2.0, help="timing per product")
    p.add_argument("--start", type=float, default=None,
                   help="wait until this Unix time before timing (several copies at once)")
    args = p.parse_args()
    if not args.seconds > 0:
        p.error(f"argument --seconds: must be > 0, got {args.seconds:g}")
    if args.start is not None and not time.time() - 60 <= args.start <= time.time() + 3600:
        p.error(f"argument --start: a Unix time within the next hour, got {args.start:g}")
    dtype = jnp.dtype(args.dtype)
    h, m = args.hidden, args.rows
    inter = swiglu_intermediate_size(h, 4)
    products = {  # the step's own contractions (`einsum`: float32 accumulation)
        "forward x W^T": jax.jit(lambda x, w, g: einsum("mi,oi->mo", x, w)),
        "input grad g W": jax.jit(lambda x, w, g: einsum("mo,oi->mi", g, w)),
        "weight grad g^T x": jax.jit(lambda x, w, g: einsum("mo,mi->oi", g, x)),
    }
    key = jax.random.key(0)
    shapes = [("qkv", h, 3 * h), ("out", h, h), ("gate_up", h, 2 * inter), ("down", inter, h)]
    compiled = []
    for name, fan_in, fan_out in shapes:
        x, w, g = (jax.random.normal(k, s, dtype) for k, s in zip(
            jax.random.split(key, 3), ((m, fan_in), (fan_out, fan_in), (m, fan_out))))
        for product, fn in products.items():
            fn(x, w, g).block_until_ready()  # compiled before the start time
            compiled.append((f"{name} {fan_in}->{fan_out}", product, fn, (x, w, g),
                             2.0 * m * fan_in * fan_out))
    if args.start is not None:
        time.sleep(max(0.0, args.start - time.time()))
    print(f"backend={jax.default_backend()} rows={m} dtype={args.dtype} (GFLOP/s)")
    for shape in dict.fromkeys(c[0] for c in compiled):
        cells = [f"{product} {rate(fn, a, f, args.seconds):6.1f}"
                 for s, product, fn, a, f in compiled if s == shape]
        print(f"  {shape:<16} " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    sys.exit(run_cli(lambda _: main(), sys.argv[1:]))  # bad input: one `error:` line
