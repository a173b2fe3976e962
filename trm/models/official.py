"""Import (and export) official PyTorch TRM state dicts and configs.

Official checkpoints are `state_dict()`s whose names look like
`_orig_mod.model.inner.L_level.layers.0.self_attn.qkv_proj.weight` (the prefix depends on
`torch.compile` and the loss-head wrapper); linear weights are [out, in] like ours.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from trm.config import ModelConfig
from trm.models.trm import TRM


class StateDictError(ValueError):
    """An official state dict does not fit the requested model config."""


_PREFIXES = ("_orig_mod.", "model.")


def config_from_official(model_cfg: Mapping[str, Any], loss_type: str = "stablemax") -> ModelConfig:
    """ModelConfig from an official architecture dict (extra keys such as batch_size ignored)."""
    loss = {"stablemax_cross_entropy": "stablemax", "softmax_cross_entropy": "softmax"}
    fields = {f for f in ModelConfig.__dataclass_fields__}
    kwargs = {k: v for k, v in model_cfg.items() if k in fields}
    kwargs["loss_type"] = loss.get(loss_type, loss_type)
    for name in ("expansion", "rms_norm_eps", "rope_theta", "halt_exploration_prob"):
        if name in kwargs:
            kwargs[name] = float(kwargs[name])
    return ModelConfig(**kwargs)


def _block_entries(config: ModelConfig) -> dict[str, Callable[[TRM], jax.Array]]:
    """Per-layer official name suffixes -> getters of our stacked [L_layers, ...] arrays."""
    mixer = "mlp_t" if config.mlp_t else "self_attn"
    projections = ("gate_up_proj", "down_proj") if config.mlp_t else ("qkv_proj", "o_proj")
    entries: dict[str, Callable[[TRM], jax.Array]] = {}
    for proj in projections:
        entries[f"{mixer}.{proj}.weight"] = lambda m, p=proj: getattr(m.net.blocks.mixer, p).weight
    for proj in ("gate_up_proj", "down_proj"):
        entries[f"mlp.{proj}.weight"] = lambda m, p=proj: getattr(m.net.blocks.mlp, p).weight
    return entries


def layer_name(i: int, suffix: str) -> str:
    return f"inner.L_level.layers.{i}.{suffix}"


def _global_entries(config: ModelConfig) -> dict[str, Callable[[TRM], jax.Array]]:
    entries: dict[str, Callable[[TRM], jax.Array]] = {
        "inner.embed_tokens.embedding_weight": lambda m: m.embed_tokens.weight,
        "inner.lm_head.weight": lambda m: m.lm_head.weight,
        "inner.q_head.weight": lambda m: m.q_head.weight,
        "inner.q_head.bias": lambda m: m.q_head.bias,
        "inner.H_init": lambda m: m.H_init,
        "inner.L_init": lambda m: m.L_init,
    }
    if config.puzzle_dim > 0:
        entries["inner.puzzle_emb.weights"] = lambda m: m.puzzle_emb
    if config.pos_encodings == "learned":
        entries["inner.embed_pos.embedding_weight"] = lambda m: m.embed_pos.weight
    return entries


def official_names(config: ModelConfig) -> list[str]:
    """Every official parameter name of a model with this config."""
    names = list(_global_entries(config))
    for i in range(config.L_layers):
        names += [layer_name(i, suffix) for suffix in _block_entries(config)]
    return names


def strip_prefix(name: str) -> str:
    """`_orig_mod.model.inner.x` -> `inner.x`."""
    for prefix in _PREFIXES:
        name = name.removeprefix(prefix)
    return name


def to_official_state_dict(tree: TRM) -> dict[str, np.ndarray]:
    """Our model (or a model-shaped gradient tree) as official names -> numpy arrays.

    Leaves that are None in `tree` (e.g. parameters without gradient) are skipped.
    """
    config = tree.config
    out = {}
    for name, get in _global_entries(config).items():
        value = get(tree)
        if value is not None:
            out[name] = np.asarray(value)
    for suffix, get in _block_entries(config).items():
        value = get(tree)
        if value is not None:
            for i in range(config.L_layers):
                out[layer_name(i, suffix)] = np.asarray(value[i])
    return out


def from_official_state_dict(state_dict: Mapping[str, Any], config: ModelConfig) -> TRM:
    """Build our TRM from an official state dict; one StateDictError names any bad parameter."""
    sd = {strip_prefix(k): np.asarray(v) for k, v in state_dict.items()}
    template = eqx.filter_eval_shape(TRM, config, key=jax.random.key(0))
    expected = official_names(config)
    missing = [n for n in expected if n not in sd]
    unexpected = sorted(set(sd) - set(expected))
    if missing:
        raise StateDictError(f"official state dict lacks parameter {missing[0]!r} "
                             f"({len(missing)} missing) for this config")
    if unexpected:
        raise StateDictError(f"official state dict has parameter {unexpected[0]!r} that this "
                             f"config does not use ({len(unexpected)} unexpected)")

    getters, values = [], []
    for name, get in _global_entries(config).items():
        _check_shape(name, sd[name].shape, get(template).shape)
        getters.append(get)
        values.append(jnp.asarray(sd[name], jnp.float32))
    for suffix, get_stacked in _block_entries(config).items():
        layer_names = [layer_name(i, suffix) for i in range(config.L_layers)]
        for name in layer_names:
            _check_shape(name, sd[name].shape, get_stacked(template).shape[1:])
        getters.append(get_stacked)
        values.append(jnp.asarray(np.stack([sd[n] for n in layer_names]), jnp.float32))

    model = TRM(config, key=jax.random.key(0))
    return eqx.tree_at(lambda m: [g(m) for g in getters], model, values)


def _check_shape(name: str, got: tuple[int, ...], want: tuple[int, ...]) -> None:
    if tuple(got) != tuple(want):
        raise StateDictError(f"parameter {name!r} has shape {tuple(got)}, "
                             f"the config needs {tuple(want)}")


def load_state_dict_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a state dict from `.npz` (keys optionally prefixed `param/`) or a torch `.pt`."""
    path = os.fspath(path)
    if path.endswith(".npz"):
        with np.load(path) as f:
            return {k.removeprefix("param/"): f[k] for k in f.files
                    if k.startswith("param/") or k.startswith(("inner.", "_orig_mod.", "model."))}
    try:
        import torch
    except ImportError as e:
        raise StateDictError(f"{path}: reading PyTorch checkpoints needs torch installed") from e
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() for k, v in sd.items()}
