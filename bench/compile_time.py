"""Compile time of one training ACT step (forward + loss + gradients) versus L_cycles.

    python bench/compile_time.py [--hidden 512] [--batch 32] [--l-cycles 2 6 12]

The recursion is a fori_loop over cycles (the few layers of a network call are unrolled), so
compile time should not grow with H_cycles x L_cycles. Sudoku shapes (seq 81, vocab 11),
attention and mlp_t.
"""

from __future__ import annotations

import argparse
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp

from trm.cli import positive_int, run_cli
from trm.config import ModelConfig
from trm.loss import step_loss
from trm.models import build_model, network_filter


def compile_seconds(config: ModelConfig, batch: int) -> float:
    model = build_model(config, key=jax.random.key(0))
    inputs = jnp.ones((batch, config.seq_len), jnp.int32)
    ids = jnp.zeros((batch,), jnp.int32)

    def train_step(model, carry, key):
        carry = model.reset(carry, inputs, inputs, ids)
        diff, static = eqx.partition(model, network_filter(model))

        def loss(d, rows):
            return step_loss(eqx.combine(d, static), carry, train=True, key=key,
                             puzzle_rows=rows)[0]
        return jax.grad(loss, argnums=(0, 1))(diff, model.puzzle_rows(carry.puzzle_identifiers))

    start = time.perf_counter()
    eqx.filter_jit(train_step).lower(model, model.initial_carry(batch), jax.random.key(1)).compile()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=positive_int, default=512)
    parser.add_argument("--batch", type=positive_int, default=32)
    parser.add_argument("--l-cycles", type=positive_int, nargs="+", default=[2, 6, 12])
    args = parser.parse_args()
    print(f"backend={jax.default_backend()} hidden={args.hidden} batch={args.batch}")
    for mlp_t in (False, True):
        for l_cycles in args.l_cycles:
            config = ModelConfig(hidden_size=args.hidden, num_heads=8, L_cycles=l_cycles,
                                 H_cycles=3, mlp_t=mlp_t,
                                 pos_encodings="none" if mlp_t else "rope")
            seconds = compile_seconds(config, args.batch)
            kind = "mlp_t" if mlp_t else "attention"
            print(f"{kind:9s} H_cycles=3 L_cycles={l_cycles:2d}: compile {seconds:.2f} s")


if __name__ == "__main__":
    sys.exit(run_cli(lambda _: main(), sys.argv[1:]))  # bad input: one `error:` line
