"""Import (and export) official PyTorch state dicts and configs, for every architecture.

Official checkpoints are `state_dict()`s whose names look like
`_orig_mod.model.inner.L_level.layers.0.self_attn.qkv_proj.weight` (the prefix depends on
`torch.compile` and the loss-head wrapper); linear weights are [out, in] like ours. Stacks:
trm family `inner.L_level`, hrm `inner.H_level` and `inner.L_level`, transformers_baseline
`inner.H_level`; initial states `inner.H_init`, `inner.L_init` (trm_hier6: `inner.L1_init` ..
`inner.L6_init`, stacked in our `L_init`; trm_singlez has no H_init, baseline no L_init).
"""

from __future__ import annotations

import math
import os
import pickle
import typing
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from trm.config import ModelConfig
from trm.models import ACTModel, build_model
from trm.models.layers import ReasoningNet
from trm.models.trm import HIER6_LATENTS


class StateDictError(ValueError):
    """An official state dict does not fit the requested model config."""


_PREFIXES = ("_orig_mod.", "model.")


ARCH_ALIASES = {"hrm_act_v1": "hrm"}
"""Module names of the original HRM repository (sapientinc/HRM, `hrm.hrm_act_v1@...`) for
the architecture that the official TRM code carries as `recursive_reasoning.hrm`."""


def arch_from_official_name(name: str) -> str:
    """`recursive_reasoning.hrm@HierarchicalReasoningModel_ACTV1` (or just `hrm`, or HRM's
    own `hrm.hrm_act_v1@...`) -> `hrm`."""
    module = name.split("@")[0].split(".")[-1]
    return ARCH_ALIASES.get(module, module)


PUZZLE_TABLE = "inner.puzzle_emb.weights"


def sizes_from_state_dict(state_dict: Mapping[str, Any]) -> dict[str, int]:
    """vocab_size (the token embedding's rows) and num_puzzle_identifiers (the puzzle
    embedding's rows, when the weights have one) as an official state dict holds them."""
    sd = {strip_prefix(k): v for k, v in state_dict.items()}
    rows = {"vocab_size": "inner.embed_tokens.embedding_weight",
            "num_puzzle_identifiers": PUZZLE_TABLE}
    return {field: int(np.shape(sd[name])[0]) for field, name in rows.items()
            if name in sd and np.ndim(sd[name]) == 2}


OFFICIAL_ARCH_KEYS = ("hidden_size", "num_heads", "expansion")
"""Keys every official architecture config has (config/arch/*.yaml); without them a dict is
not one (e.g. a wrapper around it), and defaults would silently stand in."""


def config_from_official(model_cfg: Mapping[str, Any], loss_type: str = "stablemax") -> ModelConfig:
    """ModelConfig from an official architecture dict (extra keys such as batch_size ignored);
    its `name` (`recursive_reasoning.<arch>@<class>`) selects `arch` (default trm).
    ValueError when it lacks one of OFFICIAL_ARCH_KEYS."""
    missing = [k for k in OFFICIAL_ARCH_KEYS if k not in model_cfg]
    if missing:
        raise ValueError(f"the official architecture config lacks {', '.join(missing)} (its keys: "
                         f"{', '.join(sorted(map(str, model_cfg))) or 'none'}); give the arch "
                         "section (config/arch/*.yaml, or `arch` of all_config.yaml)")
    loss = {"stablemax_cross_entropy": "stablemax", "softmax_cross_entropy": "softmax"}
    given = {k: v for k, v in model_cfg.items() if k in _HINTS} | {
        "loss_type": loss.get(loss_type, loss_type)}
    if "name" in model_cfg:
        given["arch"] = arch_from_official_name(str(model_cfg["name"]))
    return ModelConfig(**{k: _lax(k, v, _HINTS[k]) for k, v in given.items()})


def _lax(name: str, value: Any, hint: Any) -> Any:
    """`value` as the type `hint` of ModelConfig's field `name`, converted as the official
    config classes (pydantic, lax mode) do: "64" -> 64, 4 -> 4.0, "true" -> True. ValueError
    naming the key when it is not one."""
    if typing.get_origin(hint) is typing.Literal:
        if value not in typing.get_args(hint):
            raise ValueError(f"the official architecture config's {name} is {value!r}, not "
                             f"one of {', '.join(map(repr, typing.get_args(hint)))}")
        return value
    kinds = [t for t in typing.get_args(hint) or (hint,) if t is not type(None)]
    if value is None and len(kinds) < len(typing.get_args(hint) or (hint,)):
        return None
    kind = kinds[0]
    text = str(value).strip().lower()
    if kind is bool and (isinstance(value, bool) or text in _BOOLS):
        return value if isinstance(value, bool) else _BOOLS[text]
    if kind in (int, float) and not isinstance(value, bool):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if kind is float and math.isfinite(number):
            return number
        if kind is int and math.isfinite(number) and number == int(number):
            return int(number)
    if kind is str and isinstance(value, str):
        return value
    expected = {bool: "true or false", int: "an integer", float: "a number"}.get(kind, "a string")
    raise ValueError(f"the official architecture config's {name} is {value!r}, not {expected}")


_BOOLS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}
_HINTS = typing.get_type_hints(ModelConfig)


Getter = Callable[[ACTModel], jax.Array]
# An official parameter (one name) or several stacked along our leading axis (a name list).
Entry = tuple[Getter, "str | list[str]"]


def _stacks(config: ModelConfig) -> dict[str, tuple[Callable[[ACTModel], ReasoningNet], int]]:
    """Official stack name -> (getter of our block stack, its number of layers)."""
    if config.arch == "hrm":
        return {"H_level": (lambda m: m.H_level, config.H_layers),
                "L_level": (lambda m: m.L_level, config.L_layers)}
    if config.arch == "transformers_baseline":
        return {"H_level": (lambda m: m.H_level, config.H_layers)}
    return {"L_level": (lambda m: m.net, config.L_layers)}


def _entries(config: ModelConfig) -> list[Entry]:
    """Every official parameter of this config with the getter of our array holding it."""
    entries: list[Entry] = [
        (lambda m: m.embed_tokens.weight, "inner.embed_tokens.embedding_weight"),
        (lambda m: m.lm_head.weight, "inner.lm_head.weight"),
        (lambda m: m.q_head.weight, "inner.q_head.weight"),
        (lambda m: m.q_head.bias, "inner.q_head.bias"),
    ]
    if config.arch != "trm_singlez":  # the official single-z model has no H_init
        entries.append((lambda m: m.H_init, "inner.H_init"))
    if config.arch == "trm_hier6":
        entries.append((lambda m: m.L_init, [f"inner.L{i + 1}_init"
                                             for i in range(HIER6_LATENTS)]))
    elif config.arch != "transformers_baseline":
        entries.append((lambda m: m.L_init, "inner.L_init"))
    if config.puzzle_dim > 0:
        entries.append((lambda m: m.puzzle_emb, PUZZLE_TABLE))
    if config.pos_encodings == "learned":
        entries.append((lambda m: m.embed_pos.weight, "inner.embed_pos.embedding_weight"))
    mixer = "mlp_t" if config.mlp_t else "self_attn"
    projections = ("gate_up_proj", "down_proj") if config.mlp_t else ("qkv_proj", "o_proj")
    for stack, (get_stack, num_layers) in _stacks(config).items():
        def layer_names(suffix: str, stack: str = stack, n: int = num_layers) -> list[str]:
            return [f"inner.{stack}.layers.{i}.{suffix}" for i in range(n)]
        for proj in projections:
            entries.append((lambda m, g=get_stack, p=proj: getattr(g(m).blocks.mixer, p).weight,
                            layer_names(f"{mixer}.{proj}.weight")))
        for proj in ("gate_up_proj", "down_proj"):
            entries.append((lambda m, g=get_stack, p=proj: getattr(g(m).blocks.mlp, p).weight,
                            layer_names(f"mlp.{proj}.weight")))
    return entries


def _names(names: str | list[str]) -> list[str]:
    return [names] if isinstance(names, str) else names


def official_names(config: ModelConfig) -> list[str]:
    """Every official parameter name of a model with this config."""
    return [n for _, names in _entries(config) for n in _names(names)]


def strip_prefix(name: str) -> str:
    """`_orig_mod.model.inner.x` -> `inner.x`."""
    for prefix in _PREFIXES:
        name = name.removeprefix(prefix)
    return name


def to_official_state_dict(tree: ACTModel) -> dict[str, np.ndarray]:
    """Our model (or a model-shaped gradient tree) as official names -> numpy arrays.

    Leaves that are None in `tree` (e.g. parameters without gradient) are skipped.
    """
    out = {}
    for get, names in _entries(tree.config):
        value = get(tree)
        if value is None:
            continue
        if isinstance(names, str):
            out[names] = np.asarray(value)
        else:
            out.update({n: np.asarray(value[i]) for i, n in enumerate(names)})
    return out


def from_official_state_dict(state_dict: Mapping[str, Any], config: ModelConfig) -> ACTModel:
    """Build our model of `config.arch` from an official state dict; one StateDictError names
    any missing, unexpected or wrongly shaped parameter."""
    sd = {strip_prefix(k): np.asarray(v) for k, v in state_dict.items()}
    template = eqx.filter_eval_shape(build_model, config, key=jax.random.key(0))
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
    for get, names in _entries(config):
        want = get(template).shape
        if isinstance(names, str):
            _check_shape(names, sd[names].shape, want)
            value = sd[names]
        else:
            for name in names:
                _check_shape(name, sd[name].shape, want[1:])
            value = np.stack([sd[n] for n in names])
        getters.append(get)
        values.append(jnp.asarray(value, jnp.float32))

    model = build_model(config, key=jax.random.key(0))
    return eqx.tree_at(lambda m: [g(m) for g in getters], model, values)


def resize_puzzle_table(state_dict: Mapping[str, Any], rows: int
                        ) -> tuple[dict[str, Any], str | None]:
    """(state dict, notice): a puzzle embedding table of other than `rows` rows replaced by
    the mean of its rows, repeated `rows` times, as the official `load_checkpoint` does
    (pretrain.py: a model trained on other puzzles, e.g. new ARC tasks); notice None when
    nothing changed. Keys may carry the official prefixes."""
    sd = dict(state_dict)
    for key, value in state_dict.items():
        if strip_prefix(key) == PUZZLE_TABLE and np.shape(value)[0] != rows:
            table = np.asarray(value, np.float32)
            sd[key] = np.broadcast_to(table.mean(0, keepdims=True), (rows, *table.shape[1:]))
            return sd, (f"the puzzle embedding table has {table.shape[0]} rows, this data set "
                        f"{rows} puzzle identifiers: every row starts from the mean of the "
                        "loaded ones (as official)")
    return sd, None


def _check_shape(name: str, got: tuple[int, ...], want: tuple[int, ...]) -> None:
    if tuple(got) != tuple(want):
        raise StateDictError(f"parameter {name!r} has shape {tuple(got)}, "
                             f"the config needs {tuple(want)}")


def is_npz(path: str | os.PathLike) -> bool:
    """Whether `path` is a numpy .npz archive, whatever its name (a zip of .npy members;
    a torch checkpoint is a zip of a pickle and its storages)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile):
        return os.fspath(path).endswith(".npz")
    return bool(names) and all(n.endswith(".npy") for n in names)


def load_state_dict_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a state dict from an .npz (keys optionally prefixed `param/`; recognised by its
    contents, e.g. one named step_N) or a torch checkpoint (step_N, .pt; needs torch)."""
    path = os.fspath(path)
    npz = is_npz(path)
    if not npz:
        try:
            import torch
        except ImportError as e:
            raise StateDictError(f"{path}: not an .npz; reading it as a PyTorch checkpoint "
                                 "needs torch installed") from e
    try:
        if npz:
            with np.load(path) as f:
                return {k.removeprefix("param/"): f[k] for k in f.files
                        if k.startswith(("param/", "inner.", "_orig_mod.", "model."))}
        sd = torch.load(path, map_location="cpu", weights_only=True)
        return {k: v.float().numpy() for k, v in sd.items()}
    except (OSError, EOFError, KeyError, ValueError, RuntimeError, zipfile.BadZipFile,
            pickle.UnpicklingError) as e:  # a truncated zip, a pickle error: not a state dict
        raise StateDictError(f"{path}: not a readable state dict ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None
