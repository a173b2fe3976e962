"""The architectures of the official code inside one ACT wrapper.

- `layers`: linear, embedding, RoPE, attention, SwiGLU, RMS norm, the post-norm block and the
  block stack (`ReasoningNet`) every architecture is built from;
- `act`: the ACT / deep-supervision wrapper (`ACTModel`, `Carry`, `Outputs`): embeddings,
  heads, reset, halting, exploration, Q-continue target;
- `trm`: the Tiny Recursive Model (`arch` "trm", "trm_singlez" and "trm_hier6");
- `hrm`: the Hierarchical Reasoning Model (`arch` "hrm");
- `transformers_baseline`: the transformer baseline (`arch` "transformers_baseline");
- `official`: import/export of official PyTorch state dicts and configs.

`build_model(config, key=...)` builds the architecture `config.arch` names.
"""

from __future__ import annotations

from jaxtyping import PRNGKeyArray

from trm.config import ModelConfig
from trm.models.act import ACTModel, Carry, Outputs, network_filter, replace_config
from trm.models.hrm import HRM
from trm.models.transformers_baseline import TransformerBaseline
from trm.models.trm import TRM

__all__ = ["HRM", "MODEL_CLASSES", "TRM", "ACTModel", "Carry", "Outputs", "TransformerBaseline",
           "build_model", "model_class", "network_filter", "replace_config"]

MODEL_CLASSES: dict[str, type[ACTModel]] = {
    "trm": TRM, "trm_singlez": TRM, "trm_hier6": TRM, "hrm": HRM,
    "transformers_baseline": TransformerBaseline,
}


def model_class(config: ModelConfig) -> type[ACTModel]:
    """The module class of `config.arch`."""
    return MODEL_CLASSES[config.arch]


def build_model(config: ModelConfig, *, key: PRNGKeyArray) -> ACTModel:
    """A freshly initialised model of the architecture `config.arch`."""
    return model_class(config)(config, key=key)
