"""The ACT / deep-supervision wrapper shared by every architecture.

An architecture (`trm.models.trm.TRM`, ...) is an `ACTModel`: it supplies its latent update
(`inner`: one supervision step's recursion, with the architecture's gradient structure) and
its initial-state vectors; this module supplies the rest, identical for all of them, as the
official code does: token / position / puzzle embeddings, the LM and Q heads, the carry, its
reset, the step counter, halting, exploration and the Q-continue target.

Shapes: `B` rows (examples), `L = prefix_len + seq_len` positions, `D = hidden_size`. Everything
runs on the whole batch at once (no `jax.vmap` over examples).
"""

from __future__ import annotations

import abc
import copy
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from trm.config import ModelConfig
from trm.models.layers import Embedding, Linear, Rope, rope_tables


def forward_dtype(config: ModelConfig) -> jnp.dtype:
    return jnp.dtype(config.forward_dtype)


def stop_gradient_tree(tree):
    """stop_gradient on every array leaf of a PyTree (modules included)."""
    return jax.tree.map(lambda x: jax.lax.stop_gradient(x) if eqx.is_array(x) else x, tree)


def halt_margin(config: ModelConfig, q_halt: Float[Array, "*B"], q_continue: Float[Array, "*B"],
                ) -> Float[Array, "*B"]:
    """How far a row is past its halting threshold (`config.halting_rule`): q_halt -
    q_continue where the model halts on q_halt > q_continue (`halts_on_q_continue`: HRM, the
    transformer baseline, TRM with ACT continue), else q_halt. It halts where this is > 0."""
    return q_halt - q_continue if config.halts_on_q_continue else q_halt


class Carry(eqx.Module):
    """ACT state of a batch: latents, step counters, halting flags and the rows being solved.

    `z_H` is the latent the heads read; `z_L` holds the architecture's other latents (one
    [B, L, D] array, or [B, n, L, D] for several, or None when there is none).
    """

    z_H: Float[Array, "B L D"]
    z_L: Float[Array, "B *n L D"] | None
    steps: Int[Array, " B"]
    halted: Bool[Array, " B"]
    inputs: Int[Array, "B S"]
    labels: Int[Array, "B S"]
    puzzle_identifiers: Int[Array, " B"]


class Outputs(eqx.Module):
    logits: Float[Array, "B S V"]
    q_halt_logits: Float[Array, " B"]
    q_continue_logits: Float[Array, " B"]
    target_q_continue: Float[Array, " B"] | None = None


def io_layers(config: ModelConfig, k_tokens: PRNGKeyArray, k_pos: PRNGKeyArray,
              k_lm: PRNGKeyArray, k_q: PRNGKeyArray) -> tuple[
        Embedding, Embedding | None, Float[Array, "ids pdim"] | None, Linear, Linear]:
    """(embed_tokens, embed_pos, puzzle_emb, lm_head, q_head) with the official inits:
    embeddings truncated normal std 1/sqrt(D), puzzle table zeros, q_head weight 0, bias -5."""
    embed_std = 1.0 / math.sqrt(config.hidden_size)
    embed_tokens = Embedding(config.vocab_size, config.hidden_size, std=embed_std, key=k_tokens)
    embed_pos = (Embedding(config.total_len, config.hidden_size, std=embed_std, key=k_pos)
                 if config.pos_encodings == "learned" else None)
    puzzle_emb = (jnp.zeros((config.num_puzzle_identifiers, config.puzzle_dim), jnp.float32)
                  if config.puzzle_dim > 0 else None)
    lm_head = Linear(config.hidden_size, config.vocab_size, key=k_lm)
    q_head = eqx.tree_at(
        lambda q: (q.weight, q.bias),
        Linear(config.hidden_size, 2, bias=True, key=k_q),
        (jnp.zeros((2, config.hidden_size), jnp.float32), jnp.full((2,), -5.0, jnp.float32)),
    )
    return embed_tokens, embed_pos, puzzle_emb, lm_head, q_head


class ACTModel(eqx.Module):
    """An architecture inside the ACT wrapper; weights float32, activations in `forward_dtype`.

    Subclasses declare the fields below (plus their networks) and implement `inner`.
    """

    embed_tokens: eqx.AbstractVar[Embedding]
    embed_pos: eqx.AbstractVar[Embedding | None]
    puzzle_emb: eqx.AbstractVar[Float[Array, "ids pdim"] | None]
    lm_head: eqx.AbstractVar[Linear]
    q_head: eqx.AbstractVar[Linear]
    H_init: eqx.AbstractVar[Float[Array, " D"]]
    L_init: eqx.AbstractVar[Float[Array, "*n D"] | None]
    config: eqx.AbstractVar[ModelConfig]

    @abc.abstractmethod
    def inner(self, x: Float[Array, "B L D"], z_H: Float[Array, "B L D"],
              z_L: Float[Array, "B *n L D"] | None, rope: Rope,
              ) -> tuple[Float[Array, "B L D"], Float[Array, "B *n L D"] | None]:
        """One supervision step's recursion from (z_H, z_L) with input embedding x; gradients
        flow only where the architecture lets them."""

    # ---- one supervision step --------------------------------------------------------

    def rope(self) -> Rope:
        c = self.config
        if c.pos_encodings != "rope":
            return None
        return rope_tables(c.total_len, c.head_dim, c.rope_theta)

    def embed(self, inputs: Int[Array, "B S"], puzzle_rows: Float[Array, "B pdim"] | None,
              ) -> Float[Array, "B L D"]:
        """Token embeddings, puzzle-embedding prefix, positions, times sqrt(D)."""
        c = self.config
        dtype = forward_dtype(c)
        x = self.embed_tokens(inputs, dtype)
        if puzzle_rows is not None:
            batch, pdim = puzzle_rows.shape
            padded = jnp.pad(puzzle_rows.astype(dtype),
                             ((0, 0), (0, c.prefix_len * c.hidden_size - pdim)))
            x = jnp.concatenate([padded.reshape(batch, c.prefix_len, c.hidden_size), x], axis=1)
        if self.embed_pos is not None:
            x = 0.707106781 * (x + self.embed_pos.weight.astype(dtype)[None])
        return math.sqrt(c.hidden_size) * x

    def deep_recursion(self, z_H: Float[Array, "B L D"], z_L: Float[Array, "B *n L D"] | None,
                       inputs: Int[Array, "B S"], puzzle_rows: Float[Array, "B pdim"] | None,
                       ) -> tuple[Float[Array, "B L D"], Float[Array, "B *n L D"] | None,
                                  Float[Array, "B S V"], Float[Array, "B 2"]]:
        """One supervision step: embed, `inner`, heads.

        Returns the new (z_H, z_L) with gradients stopped, the token logits (puzzle prefix
        removed) and the two Q logits (float32).
        """
        x = self.embed(inputs, puzzle_rows)
        z_H, z_L = self.inner(x, z_H, z_L, self.rope())
        logits = self.lm_head(z_H)[:, self.config.prefix_len:]
        q = self.q_head(z_H[:, 0]).astype(jnp.float32)
        return jax.lax.stop_gradient(z_H), jax.lax.stop_gradient(z_L), logits, q

    # ---- a batch: ACT ------------------------------------------------------------------

    def initial_carry(self, batch_size: int) -> Carry:
        """Carry with every row halted, so the first step loads a fresh batch everywhere."""
        c = self.config
        def zeros(*shape, dtype=jnp.int32):  # distinct buffers, so the carry can be donated
            return jnp.zeros((batch_size, *shape), dtype)

        z_shape = (c.total_len, c.hidden_size)
        z_L = (None if self.L_init is None else
               zeros(*self.L_init.shape[:-1], *z_shape, dtype=forward_dtype(c)))
        return Carry(z_H=zeros(*z_shape, dtype=forward_dtype(c)), z_L=z_L, steps=zeros(),
                     halted=jnp.ones((batch_size,), bool), inputs=zeros(c.seq_len),
                     labels=zeros(c.seq_len), puzzle_identifiers=zeros())

    def reset(self, carry: Carry, inputs: Int[Array, "B S"], labels: Int[Array, "B S"],
              puzzle_identifiers: Int[Array, " B"]) -> Carry:
        """Rows that halted restart from H_init/L_init, step 0, with the new batch's rows."""
        dtype = forward_dtype(self.config)
        h = carry.halted

        def restart(init: Float[Array, "*n D"] | None, z: Float[Array, "B *n L D"] | None):
            if z is None:
                return None
            init = init.astype(dtype)[..., None, :]  # broadcast over positions
            return jnp.where(h.reshape(-1, *(1,) * (z.ndim - 1)), init, z)

        return Carry(
            z_H=restart(self.H_init, carry.z_H),
            z_L=restart(self.L_init, carry.z_L),
            steps=jnp.where(h, 0, carry.steps),
            halted=h,
            inputs=jnp.where(h[:, None], inputs, carry.inputs),
            labels=jnp.where(h[:, None], labels, carry.labels),
            puzzle_identifiers=jnp.where(h, puzzle_identifiers, carry.puzzle_identifiers),
        )

    def puzzle_rows(self, puzzle_identifiers: Int[Array, " B"]) -> Float[Array, "B pdim"] | None:
        return None if self.puzzle_emb is None else self.puzzle_emb[puzzle_identifiers]

    def step(self, carry: Carry, *, train: bool, key: PRNGKeyArray | None = None,
             puzzle_rows: Float[Array, "B pdim"] | None = None,
             min_halt_steps: Int[Array, " B"] | None = None) -> tuple[Carry, Outputs]:
        """One ACT step on an already reset carry: recursion, step count, halting decision.

        `puzzle_rows` overrides the table lookup (the train step differentiates w.r.t. them).
        Training halts on q_halt > 0 (or q_halt > q_continue: `halts_on_q_continue`), but not
        before `min_halt_steps` (default: `exploration_min_steps(key, B)`); evaluation runs
        `halt_max_steps` steps (transformers_baseline with act_inference: halts without
        exploration). With `trains_q_continue` the outputs carry the Q-continue target.
        """
        c = self.config
        if puzzle_rows is None:
            puzzle_rows = self.puzzle_rows(carry.puzzle_identifiers)
        z_H, z_L, logits, q = self.deep_recursion(carry.z_H, carry.z_L, carry.inputs, puzzle_rows)
        q_halt, q_continue = q[:, 0], q[:, 1]
        steps = carry.steps + 1
        is_last = steps >= c.halt_max_steps
        halted = is_last
        target = None
        if c.adaptive_halting(train):
            halted = halted | (halt_margin(c, q_halt, q_continue) > 0)
        if train and c.adaptive_halting(train):
            if min_halt_steps is None:
                min_halt_steps = self.exploration_min_steps(key, steps.shape[0])
            halted = halted & (steps >= min_halt_steps)
            if c.trains_q_continue:
                _, _, _, next_q = self.deep_recursion(z_H, z_L, carry.inputs, puzzle_rows)
                next_q = jax.lax.stop_gradient(next_q)
                target = jax.nn.sigmoid(jnp.where(
                    is_last, next_q[:, 0], jnp.maximum(next_q[:, 0], next_q[:, 1])))
        new_carry = eqx.tree_at(lambda cr: (cr.z_H, cr.z_L, cr.steps, cr.halted), carry,
                                (z_H, z_L, steps, halted), is_leaf=lambda x: x is None)
        return new_carry, Outputs(logits, q_halt, q_continue, target)

    def exploration_min_steps(self, key: PRNGKeyArray | None, batch_size: int,
                              prob: Float[Array, ""] | float | None = None,
                              ) -> Int[Array, " B"]:
        """Per row: uniform in [2, halt_max_steps] with probability `prob` (default
        `halt_exploration_prob`; an array when annealed over training), else 0."""
        c = self.config
        prob = c.halt_exploration_prob if prob is None else prob
        if isinstance(prob, float) and prob == 0.0:
            return jnp.zeros((batch_size,), jnp.int32)
        if key is None:
            raise ValueError("training with halting exploration needs a PRNG key")
        k_explore, k_steps = jax.random.split(key)
        explore = jax.random.uniform(k_explore, (batch_size,)) < prob
        min_steps = jax.random.randint(k_steps, (batch_size,), 2, c.halt_max_steps + 1)
        return jnp.where(explore, min_steps, 0)

    def __call__(self, carry: Carry, inputs: Int[Array, "B S"], labels: Int[Array, "B S"],
                 puzzle_identifiers: Int[Array, " B"], *, train: bool,
                 key: PRNGKeyArray | None = None) -> tuple[Carry, Outputs]:
        """reset + step: the official ACT wrapper's forward."""
        carry = self.reset(carry, inputs, labels, puzzle_identifiers)
        return self.step(carry, train=train, key=key)


_BUFFERS = ("H_init", "L_init", "puzzle_emb")


def network_filter(model: ACTModel) -> ACTModel:
    """Boolean PyTree: True on network weights (AdamATan2/EMA), False on the puzzle table and
    the fixed initial-state vectors."""
    spec = jax.tree.map(eqx.is_inexact_array, model)
    for name in _BUFFERS:
        if getattr(model, name) is not None:
            spec = eqx.tree_at(lambda m, n=name: getattr(m, n), spec, False)
    return spec


def replace_config(model: ACTModel, config: ModelConfig) -> ACTModel:
    """The same arrays under another config that needs the same parameter shapes (other
    cycle counts, forward dtype, halting settings). Works on filtered trees too (e.g. an EMA
    of the network with None elsewhere)."""
    template = eqx.filter_eval_shape(type(model), config, key=jax.random.key(0))
    have = jax.tree.leaves(model, is_leaf=lambda x: x is None)
    want = jax.tree.leaves(template, is_leaf=lambda x: x is None)
    if len(have) != len(want) or any(
            h is not None and w is not None and (h.shape, h.dtype) != (w.shape, w.dtype)
            for h, w in zip(have, want)):
        raise ValueError("the new config needs different parameter shapes")
    new = copy.copy(model)
    object.__setattr__(new, "config", config)
    return new
