"""The Hierarchical Reasoning Model (HRM; official models/recursive_reasoning/hrm.py).

Two stacks with their own weights, L_level (L_layers blocks) and H_level (H_layers blocks), and
two latents. One supervision step (on the whole batch):

    for H_cycles cycles:
        L_cycles times: z_L = L_level(z_L, z_H + x)
        z_H = H_level(z_H, z_L)

all without gradient except the very last L update and the very last H update (the paper's
"one-step gradient"): the stacks, embeddings and puzzle rows get gradient only through those two
calls. The ACT wrapper (halting on q_halt > q_continue, the Q-continue target) is
`trm.models.act.ACTModel`'s, driven by the config.
"""

from __future__ import annotations

import equinox as eqx
import jax
from jaxtyping import Array, Float, PRNGKeyArray

from trm.config import ModelConfig
from trm.models.act import ACTModel, io_layers, stop_gradient_tree
from trm.models.layers import Embedding, Linear, ReasoningNet, Rope, trunc_normal


class HRM(ACTModel):
    """HRM ACT v1: separate H-level and L-level stacks, one-step gradient."""

    embed_tokens: Embedding
    embed_pos: Embedding | None
    puzzle_emb: Float[Array, "ids pdim"] | None
    H_level: ReasoningNet
    L_level: ReasoningNet
    lm_head: Linear
    q_head: Linear
    H_init: Float[Array, " D"]
    L_init: Float[Array, " D"]
    config: ModelConfig = eqx.field(static=True)

    def __init__(self, config: ModelConfig, *, key: PRNGKeyArray):
        keys = jax.random.split(key, 8)
        self.config = config
        (self.embed_tokens, self.embed_pos, self.puzzle_emb, self.lm_head,
         self.q_head) = io_layers(config, keys[0], keys[1], keys[2], keys[3])
        self.H_level = ReasoningNet(config, config.H_layers, key=keys[4])
        self.L_level = ReasoningNet(config, config.L_layers, key=keys[5])
        self.H_init = trunc_normal(keys[6], (config.hidden_size,), 1.0)
        self.L_init = trunc_normal(keys[7], (config.hidden_size,), 1.0)

    def inner(self, x: Float[Array, "B L D"], z_H: Float[Array, "B L D"],
              z_L: Float[Array, "B L D"], rope: Rope,
              ) -> tuple[Float[Array, "B L D"], Float[Array, "B L D"]]:
        """H_cycles x (L_cycles L updates, one H update); only the last two with gradient."""
        c = self.config
        frozen, (x_ng, z_H, z_L) = stop_gradient_tree((self, (x, z_H, z_L)))

        def l_updates(n: int, z_H: Float[Array, "B L D"], z_L: Float[Array, "B L D"]):
            return jax.lax.fori_loop(0, n, lambda _, z: frozen.L_level(z, z_H + x_ng, rope), z_L)

        def cycle(_, zs):
            z_H, z_L = zs
            z_L = l_updates(c.L_cycles, z_H, z_L)
            return frozen.H_level(z_H, z_L, rope), z_L

        z_H, z_L = jax.lax.fori_loop(0, c.H_cycles - 1, cycle, (z_H, z_L))
        z_L = l_updates(c.L_cycles - 1, z_H, z_L)
        z_L = self.L_level(z_L, z_H + x, rope)  # the one-step gradient
        return self.H_level(z_H, z_L, rope), z_L
