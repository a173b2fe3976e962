"""Small shared builders for the tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp

from trm.config import ModelConfig
from trm.models import ACTModel, build_model

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL_CASES = ("attn_rope", "mlp_t_none", "attn_learned")


def tiny_config(**overrides) -> ModelConfig:
    """A CPU-sized model: 2 layers, hidden 32, short sequences."""
    base = ModelConfig(vocab_size=7, seq_len=12, num_puzzle_identifiers=4, puzzle_emb_len=2,
                       hidden_size=32, num_heads=4, expansion=2.0, L_layers=2, H_cycles=2,
                       L_cycles=2, halt_max_steps=4, halt_exploration_prob=0.0)
    return dataclasses.replace(base, **overrides)


def tiny_batch(config: ModelConfig, batch_size: int = 3, seed: int = 0):
    """(inputs, labels, puzzle_identifiers) with some ignored labels."""
    k_in, k_lab, k_ids = jax.random.split(jax.random.key(seed), 3)
    shape = (batch_size, config.seq_len)
    inputs = jax.random.randint(k_in, shape, 1, config.vocab_size, dtype=jnp.int32)
    labels = jax.random.randint(k_lab, shape, 1, config.vocab_size, dtype=jnp.int32)
    labels = labels.at[:, :2].set(-100)
    ids = jax.random.randint(k_ids, (batch_size,), 0, config.num_puzzle_identifiers,
                             dtype=jnp.int32)
    return inputs, labels, ids


def tiny_model(config: ModelConfig, seed: int = 0) -> ACTModel:
    """A model with random (not zero) puzzle embeddings and Q head, so every path matters."""
    model = build_model(config, key=jax.random.key(seed))
    k_p, k_q = jax.random.split(jax.random.key(seed + 1))
    return eqx.tree_at(
        lambda m: (m.puzzle_emb, m.q_head.weight), model,
        (jax.random.normal(k_p, model.puzzle_emb.shape),
         0.1 * jax.random.normal(k_q, model.q_head.weight.shape)))
