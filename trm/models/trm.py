"""The Tiny Recursive Model: one shared network and a recursion over (z_H, z_L).

`arch` "trm" is the paper's model, "trm_singlez" its single-latent ablation (only z_L, read
by the heads), "trm_hier6" the six-latent variant (official trm_hier6.py: z_L holds six
latents [B, 6, L, D]; L step l rewrites latent l from their sum).

Shapes: `B` rows, `L = prefix_len + seq_len` positions, `D = hidden_size`; the network and the
recursion run on the whole batch. The recursion follows the paper's pseudocode:

    def latent_recursion(x, y, z):        # y = z_H (answer), z = z_L (latent)
        for i in range(L_cycles): z = net(z, y + x)
        y = net(y, z)
    def deep_recursion(x, y, z):
        with no_grad: repeat H_cycles - 1 times: latent_recursion(x, y, z)
        latent_recursion(x, y, z)
        return (y, z) detached, lm_head(y), q_head(y[0])

The ACT wrapper around it (embeddings, heads, carry, halting) is `trm.models.act.ACTModel`.
"""

from __future__ import annotations

import functools
import operator

import equinox as eqx
import jax
from jaxtyping import Array, Float, PRNGKeyArray

from trm.config import ModelConfig
from trm.models.act import ACTModel, io_layers, stop_gradient_tree
from trm.models.layers import Embedding, Linear, ReasoningNet, Rope, trunc_normal

HIER6_LATENTS = 6
REMAT_POLICY = jax.checkpoint_policies.dots_with_no_batch_dims_saveable
"""What a rematerialised network call keeps for its backward pass: the outputs of its
projections (dots without batch dimensions); the attention's per-head products and the
element-wise work are recomputed (README, Performance)."""


def latent_sum(z_L: Float[Array, "B n L D"]) -> Float[Array, "B L D"]:
    """z_L[:, 0] + z_L[:, 1] + ... in that order (the official float32 summation order)."""
    return functools.reduce(operator.add, [z_L[:, i] for i in range(z_L.shape[1])])


def use_remat(config: ModelConfig) -> bool:
    """`config.remat`, with None resolved by the backend JAX computes on (on for CPU)."""
    if config.remat is None:
        return jax.default_backend() == "cpu"
    return config.remat


class TRM(ACTModel):
    """Tiny Recursive Model (TRM ACT v1) and its variants trm_singlez / trm_hier6."""

    embed_tokens: Embedding
    embed_pos: Embedding | None
    puzzle_emb: Float[Array, "ids pdim"] | None
    net: ReasoningNet
    lm_head: Linear
    q_head: Linear
    H_init: Float[Array, " D"]
    L_init: Float[Array, "*n D"]  # [6, D] for trm_hier6 (official L1_init .. L6_init)
    config: ModelConfig = eqx.field(static=True)

    def __init__(self, config: ModelConfig, *, key: PRNGKeyArray):
        keys = jax.random.split(key, 7)
        self.config = config
        (self.embed_tokens, self.embed_pos, self.puzzle_emb, self.lm_head,
         self.q_head) = io_layers(config, keys[0], keys[1], keys[3], keys[6])
        self.net = ReasoningNet(config, config.L_layers, key=keys[2])
        self.H_init = trunc_normal(keys[4], (config.hidden_size,), 1.0)
        n_latents = (HIER6_LATENTS,) if config.arch == "trm_hier6" else ()
        self.L_init = trunc_normal(keys[5], (*n_latents, config.hidden_size), 1.0)

    def latent_recursion(self, x: Float[Array, "B L D"], z_H: Float[Array, "B L D"],
                         z_L: Float[Array, "B *n L D"], rope: Rope, remat: bool = False,
                         ) -> tuple[Float[Array, "B L D"], Float[Array, "B *n L D"]]:
        """L_cycles latent updates then one answer update (TRM), or the single-z / hier6
        variant."""
        c = self.config
        net = self.net
        if remat:  # the module goes in as an argument: jax.checkpoint hashes its callable
            recompute = jax.checkpoint(lambda module, h, inj, rope_: module(h, inj, rope_),
                                       policy=REMAT_POLICY)
            net = functools.partial(recompute, self.net)
        if c.arch == "trm_singlez":
            z_L = jax.lax.fori_loop(0, c.L_cycles, lambda _, z: net(z, x, rope), z_L)
            z_L = net(z_L, None, rope)
            return z_L, z_L
        if c.arch == "trm_hier6":  # L step l rewrites latent l from the sum of all six
            z_L = jax.lax.fori_loop(
                0, c.L_cycles, lambda l, z: z.at[:, l].set(net(latent_sum(z), z_H + x, rope)), z_L)
            return net(z_H, latent_sum(z_L), rope), z_L
        z_L = jax.lax.fori_loop(0, c.L_cycles, lambda _, z: net(z, z_H + x, rope), z_L)
        z_H = net(z_H, z_L, rope)
        return z_H, z_L

    def inner(self, x: Float[Array, "B L D"], z_H: Float[Array, "B L D"],
              z_L: Float[Array, "B *n L D"], rope: Rope,
              ) -> tuple[Float[Array, "B L D"], Float[Array, "B *n L D"]]:
        """H_cycles - 1 latent recursions without gradient, then one with gradient."""
        if self.config.H_cycles > 1:
            frozen_self, frozen = stop_gradient_tree((self, (x, z_H, z_L)))
            z_H, z_L = jax.lax.fori_loop(
                0, self.config.H_cycles - 1,
                lambda _, zs: frozen_self.latent_recursion(frozen[0], *zs, rope), frozen[1:])
        return self.latent_recursion(x, z_H, z_L, rope, remat=use_remat(self.config))
