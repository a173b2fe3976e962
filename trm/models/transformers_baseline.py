"""The transformer baseline (official models/recursive_reasoning/transformers_baseline.py).

One stack H_level of H_layers attention blocks and one latent: a supervision step is a single
pass z_H = H_level(z_H, x), all with gradient, no recursion inside a step. Deep supervision
and halting are the shared ACT wrapper's (`trm.models.act.ACTModel`): it halts on
q_halt > q_continue (training if act_enabled, evaluation if act_inference) and, as the
official loss head never asks for it, computes no Q-continue target.
"""

from __future__ import annotations

import equinox as eqx
import jax
from jaxtyping import Array, Float, PRNGKeyArray

from trm.config import ModelConfig
from trm.models.act import ACTModel, io_layers
from trm.models.layers import Embedding, Linear, ReasoningNet, Rope, trunc_normal


class TransformerBaseline(ACTModel):
    """Model ACT v2: a plain transformer stack inside the ACT / deep-supervision wrapper."""

    embed_tokens: Embedding
    embed_pos: Embedding | None
    puzzle_emb: Float[Array, "ids pdim"] | None
    H_level: ReasoningNet
    lm_head: Linear
    q_head: Linear
    H_init: Float[Array, " D"]
    config: ModelConfig = eqx.field(static=True)
    L_init: None = None  # one latent only

    def __init__(self, config: ModelConfig, *, key: PRNGKeyArray):
        keys = jax.random.split(key, 6)
        self.config = config
        (self.embed_tokens, self.embed_pos, self.puzzle_emb, self.lm_head,
         self.q_head) = io_layers(config, keys[0], keys[1], keys[2], keys[3])
        self.H_level = ReasoningNet(config, config.H_layers, key=keys[4])
        self.H_init = trunc_normal(keys[5], (config.hidden_size,), 1.0)

    def inner(self, x: Float[Array, "B L D"], z_H: Float[Array, "B L D"], z_L: None,
              rope: Rope) -> tuple[Float[Array, "B L D"], None]:
        """One pass of the stack with the input injected: z_H = H_level(z_H + x)."""
        return self.H_level(z_H, x, rope), None
