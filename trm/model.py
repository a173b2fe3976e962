"""The Tiny Recursive Model: one shared network, a recursion over (z_H, z_L), and ACT.

Per-example shapes: `L = prefix_len + seq_len` positions, `D = hidden_size`.
The recursion follows the paper's pseudocode:

    def latent_recursion(x, y, z):        # y = z_H (answer), z = z_L (latent)
        for i in range(L_cycles): z = net(z, y + x)
        y = net(y, z)
    def deep_recursion(x, y, z):
        with no_grad: repeat H_cycles - 1 times: latent_recursion(x, y, z)
        latent_recursion(x, y, z)
        return (y, z) detached, lm_head(y), q_head(y[0])
"""

from __future__ import annotations

import copy
import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from trm.config import ModelConfig
from trm.layers import Attention, Embedding, Linear, SwiGLU, rms_norm, rope_tables, trunc_normal

Rope = tuple[Float[Array, "L hd"], Float[Array, "L hd"]] | None

def forward_dtype(config: ModelConfig) -> jnp.dtype:
    return jnp.dtype(config.forward_dtype)


def stop_gradient_tree(tree):
    """stop_gradient on every array leaf of a PyTree (modules included)."""
    return jax.tree.map(lambda x: jax.lax.stop_gradient(x) if eqx.is_array(x) else x, tree)


class Block(eqx.Module):
    """Post-norm block: x = rms(x + mix(x)); x = rms(x + SwiGLU(x))."""

    mixer: Attention | SwiGLU
    mlp: SwiGLU
    eps: float = eqx.field(static=True)

    def __init__(self, config: ModelConfig, *, key: PRNGKeyArray):
        k_mix, k_mlp = jax.random.split(key)
        if config.mlp_t:
            self.mixer = SwiGLU(config.total_len, config.expansion, key=k_mix)
        else:
            self.mixer = Attention(config.hidden_size, config.num_heads, key=k_mix)
        self.mlp = SwiGLU(config.hidden_size, config.expansion, key=k_mlp)
        self.eps = config.rms_norm_eps

    def __call__(self, x: Float[Array, "L D"], rope: Rope) -> Float[Array, "L D"]:
        if isinstance(self.mixer, Attention):
            x = rms_norm(x + self.mixer(x, rope), self.eps)
        else:  # mlp_t: SwiGLU along the sequence axis, normalised over it
            xt = x.T
            x = rms_norm(xt + self.mixer(xt), self.eps).T
        return rms_norm(x + self.mlp(x), self.eps)


class ReasoningNet(eqx.Module):
    """The single shared network: net(h, inj) = blocks(h + inj), blocks stacked and scanned."""

    blocks: Block  # every array leaf has a leading [L_layers] axis

    def __init__(self, config: ModelConfig, *, key: PRNGKeyArray):
        keys = jax.random.split(key, config.L_layers)
        self.blocks = eqx.filter_vmap(lambda k: Block(config, key=k))(keys)

    def __call__(self, h: Float[Array, "L D"], injection: Float[Array, "L D"] | None,
                 rope: Rope) -> Float[Array, "L D"]:
        if injection is not None:
            h = h + injection
        params, static = eqx.partition(self.blocks, eqx.is_array)

        def apply_block(x, block_params):
            return eqx.combine(block_params, static)(x, rope), None

        h, _ = jax.lax.scan(apply_block, h, params)
        return h


class Carry(eqx.Module):
    """ACT state of a batch: latents, step counters, halting flags and the rows being solved."""

    z_H: Float[Array, "B L D"]
    z_L: Float[Array, "B L D"]
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


class TRM(eqx.Module):
    """Tiny Recursive Model (TRM ACT v1); weights float32, activations in `forward_dtype`."""

    embed_tokens: Embedding
    embed_pos: Embedding | None
    puzzle_emb: Float[Array, "ids pdim"] | None
    net: ReasoningNet
    lm_head: Linear
    q_head: Linear
    H_init: Float[Array, " D"]
    L_init: Float[Array, " D"]
    config: ModelConfig = eqx.field(static=True)

    def __init__(self, config: ModelConfig, *, key: PRNGKeyArray):
        keys = jax.random.split(key, 7)
        embed_std = 1.0 / math.sqrt(config.hidden_size)
        self.config = config
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, std=embed_std,
                                      key=keys[0])
        self.embed_pos = (Embedding(config.total_len, config.hidden_size, std=embed_std,
                                    key=keys[1])
                          if config.pos_encodings == "learned" else None)
        self.puzzle_emb = (jnp.zeros((config.num_puzzle_identifiers, config.puzzle_dim),
                                     jnp.float32) if config.puzzle_dim > 0 else None)
        self.net = ReasoningNet(config, key=keys[2])
        self.lm_head = Linear(config.hidden_size, config.vocab_size, key=keys[3])
        self.q_head = eqx.tree_at(
            lambda q: (q.weight, q.bias),
            Linear(config.hidden_size, 2, bias=True, key=keys[6]),
            (jnp.zeros((2, config.hidden_size), jnp.float32), jnp.full((2,), -5.0, jnp.float32)),
        )
        self.H_init = trunc_normal(keys[4], (config.hidden_size,), 1.0)
        self.L_init = trunc_normal(keys[5], (config.hidden_size,), 1.0)

    # ---- one example -------------------------------------------------------------------

    def rope(self) -> Rope:
        c = self.config
        if c.pos_encodings != "rope":
            return None
        return rope_tables(c.total_len, c.head_dim, c.rope_theta)

    def embed(self, inputs: Int[Array, " S"], puzzle_row: Float[Array, " pdim"] | None,
              ) -> Float[Array, "L D"]:
        """Token embeddings, puzzle-embedding prefix, positions, times sqrt(D)."""
        c = self.config
        dtype = forward_dtype(c)
        x = self.embed_tokens(inputs, dtype)
        if puzzle_row is not None:
            padded = jnp.pad(puzzle_row.astype(dtype), (0, c.prefix_len * c.hidden_size
                                                        - puzzle_row.shape[0]))
            x = jnp.concatenate([padded.reshape(c.prefix_len, c.hidden_size), x], axis=0)
        if self.embed_pos is not None:
            x = 0.707106781 * (x + self.embed_pos.weight.astype(dtype))
        return math.sqrt(c.hidden_size) * x

    def latent_recursion(self, x: Float[Array, "L D"], z_H: Float[Array, "L D"],
                         z_L: Float[Array, "L D"], rope: Rope, remat: bool = False,
                         ) -> tuple[Float[Array, "L D"], Float[Array, "L D"]]:
        """L_cycles latent updates then one answer update (TRM), or the single-z variant."""
        c = self.config
        net = self.net
        if remat:  # the module goes in as an argument: jax.checkpoint hashes its callable
            recompute = jax.checkpoint(lambda module, h, inj, rope_: module(h, inj, rope_))
            net = functools.partial(recompute, self.net)
        if c.variant == "single_z":
            z_L = jax.lax.fori_loop(0, c.L_cycles, lambda _, z: net(z, x, rope), z_L)
            z_L = net(z_L, None, rope)
            return z_L, z_L
        z_L = jax.lax.fori_loop(0, c.L_cycles, lambda _, z: net(z, z_H + x, rope), z_L)
        z_H = net(z_H, z_L, rope)
        return z_H, z_L

    def deep_recursion(self, z_H: Float[Array, "L D"], z_L: Float[Array, "L D"],
                       inputs: Int[Array, " S"], puzzle_row: Float[Array, " pdim"] | None,
                       ) -> tuple[Float[Array, "L D"], Float[Array, "L D"],
                                  Float[Array, "S V"], Float[Array, " 2"]]:
        """One supervision step: H_cycles - 1 cycles without gradient, one with.

        Returns the new (z_H, z_L) with gradients stopped, the token logits (puzzle prefix
        removed) and the two Q logits (float32).
        """
        rope = self.rope()
        x = self.embed(inputs, puzzle_row)
        if self.config.H_cycles > 1:
            frozen_self, frozen = stop_gradient_tree((self, (x, z_H, z_L)))
            z_H, z_L = jax.lax.fori_loop(
                0, self.config.H_cycles - 1,
                lambda _, zs: frozen_self.latent_recursion(frozen[0], *zs, rope), frozen[1:])
        z_H, z_L = self.latent_recursion(x, z_H, z_L, rope, remat=self.config.remat)
        logits = self.lm_head(z_H)[self.config.prefix_len:]
        q = self.q_head(z_H[0]).astype(jnp.float32)
        return jax.lax.stop_gradient(z_H), jax.lax.stop_gradient(z_L), logits, q

    # ---- a batch: ACT ------------------------------------------------------------------

    def initial_carry(self, batch_size: int) -> Carry:
        """Carry with every row halted, so the first step loads a fresh batch everywhere."""
        c = self.config
        def zeros(*shape, dtype=jnp.int32):  # distinct buffers, so the carry can be donated
            return jnp.zeros((batch_size, *shape), dtype)

        z_shape = (c.total_len, c.hidden_size)
        return Carry(z_H=zeros(*z_shape, dtype=forward_dtype(c)),
                     z_L=zeros(*z_shape, dtype=forward_dtype(c)), steps=zeros(),
                     halted=jnp.ones((batch_size,), bool), inputs=zeros(c.seq_len),
                     labels=zeros(c.seq_len), puzzle_identifiers=zeros())

    def reset(self, carry: Carry, inputs: Int[Array, "B S"], labels: Int[Array, "B S"],
              puzzle_identifiers: Int[Array, " B"]) -> Carry:
        """Rows that halted restart from H_init/L_init, step 0, with the new batch's rows."""
        dtype = forward_dtype(self.config)
        h = carry.halted
        return Carry(
            z_H=jnp.where(h[:, None, None], self.H_init.astype(dtype), carry.z_H),
            z_L=jnp.where(h[:, None, None], self.L_init.astype(dtype), carry.z_L),
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
        Training halts on q_halt > 0 (or q_halt > q_continue), but not before
        `min_halt_steps` (default: `exploration_min_steps(key, B)`); evaluation always runs
        `halt_max_steps` steps.
        """
        c = self.config
        if puzzle_rows is None:
            puzzle_rows = self.puzzle_rows(carry.puzzle_identifiers)
        recurse = jax.vmap(self.deep_recursion)
        z_H, z_L, logits, q = recurse(carry.z_H, carry.z_L, carry.inputs, puzzle_rows)
        q_halt, q_continue = q[:, 0], q[:, 1]
        steps = carry.steps + 1
        is_last = steps >= c.halt_max_steps
        halted = is_last
        target = None
        if train and c.halt_max_steps > 1:
            halted = halted | (q_halt > 0 if c.no_ACT_continue else q_halt > q_continue)
            if min_halt_steps is None:
                min_halt_steps = self.exploration_min_steps(key, steps.shape[0])
            halted = halted & (steps >= min_halt_steps)
            if not c.no_ACT_continue:
                _, _, _, next_q = recurse(z_H, z_L, carry.inputs, puzzle_rows)
                next_q = jax.lax.stop_gradient(next_q)
                target = jax.nn.sigmoid(jnp.where(
                    is_last, next_q[:, 0], jnp.maximum(next_q[:, 0], next_q[:, 1])))
        new_carry = eqx.tree_at(lambda cr: (cr.z_H, cr.z_L, cr.steps, cr.halted), carry,
                                (z_H, z_L, steps, halted))
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


def network_filter(model: TRM) -> TRM:
    """Boolean PyTree: True on network weights (AdamATan2/EMA), False on the puzzle table and
    the fixed H_init/L_init vectors."""
    spec = jax.tree.map(eqx.is_inexact_array, model)
    spec = eqx.tree_at(lambda m: (m.H_init, m.L_init), spec, (False, False))
    if model.puzzle_emb is not None:
        spec = eqx.tree_at(lambda m: m.puzzle_emb, spec, False)
    return spec


def replace_config(model: TRM, config: ModelConfig) -> TRM:
    """The same arrays under another config that needs the same parameter shapes (other
    cycle counts, forward dtype, halting settings). Works on filtered trees too (e.g. an EMA
    of the network with None elsewhere)."""
    template = eqx.filter_eval_shape(TRM, config, key=jax.random.key(0))
    have = jax.tree.leaves(model, is_leaf=lambda x: x is None)
    want = jax.tree.leaves(template, is_leaf=lambda x: x is None)
    if len(have) != len(want) or any(
            h is not None and w is not None and (h.shape, h.dtype) != (w.shape, w.dtype)
            for h, w in zip(have, want)):
        raise ValueError("the new config needs different parameter shapes")
    new = copy.copy(model)
    object.__setattr__(new, "config", config)
    return new
