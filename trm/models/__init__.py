"""The architectures of the official code inside one ACT wrapper.

- `layers`: linear, embedding, RoPE, attention, SwiGLU, RMS norm, the post-norm block and the
  block stack (`ReasoningNet`) every architecture is built from;
- `act`: the ACT / deep-supervision wrapper (`ACTModel`, `Carry`, `Outputs`): embeddings,
  heads, reset, halting, exploration, Q-continue target;
- `trm`: the Tiny Recursive Model (`arch` "trm" and "trm_singlez");
- `official`: import/export of official PyTorch state dicts and configs.

`build_model(config, key=...)` builds the architecture `config.arch` names.
"""

from __future__ import annotations

from jaxtyping import PRNGKeyArray

from trm.config import ModelConfig
from trm.models.act import ACTModel, Carry, Outputs, network_filter, replace_config
from trm.models.trm import TRM

__all__ = [
    "TRM",
    "ACTModel",
    "Carry",
    "Outputs",
    "build_model",
    "model_class",
    "network_filter",
    "replace_config",
]


def model_class(config: ModelConfig) -> type[ACTModel]:
    """The module class of `config.arch`."""
    return {"trm": TRM, "trm_singlez": TRM}[config.arch]


def build_model(config: ModelConfig, *, key: PRNGKeyArray) -> ACTModel:
    """A freshly initialised model of the architecture `config.arch`."""
    return model_class(config)(config, key=key)
