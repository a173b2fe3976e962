"""Where evaluated weights come from: one of our checkpoint directories (EMA weights by
default, raw on request) or an imported official state dict with its architecture config.

`load_model(source, data_dir=...)` returns the model plus a JSON description of what was
loaded; `evaluate.py` and `evaluate.py solve` share it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import textwrap
import typing
import zipfile
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np

from data import fingerprint
from data.storage import as_path
from trm.checkpoint import Checkpointer, UnusableCheckpoint, newest_usable, peek_run_configs
from trm.cli import warn
from trm.config import DATA_SET_FIELDS, ConfigError, ModelConfig, require
from trm.config_diff import to_json
from trm.integrity import all_finite
from trm.models import ACTModel, build_model, replace_config
from trm.models.official import (
    StateDictError,
    config_from_official,
    from_official_state_dict,
    is_npz,
    load_state_dict_file,
    resize_puzzle_table,
    sizes_from_state_dict,
    to_official_state_dict,
)
from trm.optim import build_optimizer, build_schedules
from trm.run_config import CheckpointConfig, RunConfig
from trm.train_step import TrainState, eval_model, init_train_state


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Weights to evaluate: --checkpoint-dir, or --official-weights (+ --official-config)."""

    checkpoint_dir: str | None = None
    """Checkpoint directory written by train.py (<run_dir>/checkpoints)."""
    step: int | None = None
    """Checkpoint step to load (None: the latest)."""
    raw_weights: bool = False
    """Use the raw network weights instead of their EMA (the training-time evaluation weights)."""
    official_weights: str | None = None
    """Official PyTorch state dict (step_N / .pt, needs torch) or .npz of param/<name> arrays."""
    official_config: str | None = None
    """Official architecture: all_config.yaml, a JSON file ({"arch": ...}, {"model": ...,
    "loss_type": ...} or the arch dict) or an .npz holding config_json (None: the weights
    file, when it is an .npz)."""
    halt_max_steps: int | None = None
    """Run this many supervision steps instead of the trained number (None: as trained)."""
    allow_data_mismatch: bool = False
    """Evaluate even if the data set's fingerprint differs from the checkpoint's training data
    (a one-line warning instead of an error)."""

    def __post_init__(self) -> None:
        for name in ("step", "halt_max_steps"):
            value, low = getattr(self, name), 0 if name == "step" else 1
            require(value is None or value >= low, self, name, f"must be >= {low}, got {value}")


OFFICIAL_EVAL_BATCH = 768
"""Evaluation batch of official weights without --batch-size (the official configs' global
batch)."""


def planned_batches(source: ModelSource, batch_size: int | None) -> tuple[int, ...]:
    """The evaluation batches an evaluation of `source` may use, known before JAX starts, so
    that the CPU is split into devices dividing them (`split_cpu`): `batch_size` (the
    --batch-size given), else the official default, else every stored step's run setting;
    () when unknown (a URL, no readable config: the CPU is then left as one device)."""
    if batch_size is not None:
        return (batch_size,)
    if source.official_weights:
        return (OFFICIAL_EVAL_BATCH,)
    batches = set()
    for run in peek_run_configs(source.checkpoint_dir or ""):
        try:
            batches.add(dataclass_from_json(RunConfig, run).eval_batch_size)
        except (TypeError, ConfigError):  # unreadable: the restore will say so
            continue
    return tuple(sorted(batches))


@dataclasses.dataclass
class LoadedModel:
    model: ACTModel
    info: dict[str, Any]
    """JSON description: where the weights came from, step, which weights, model config."""
    run_config: RunConfig | None = None
    """The training run's config (checkpoints only)."""
    data_fingerprint: dict[str, Any] | None = None
    """Fingerprint of the training data set (checkpoints written since fingerprints)."""


def dataclass_from_json(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a (nested) config dataclass from its JSON form; lists become tuples, keys the
    dataclass does not have are ignored and missing ones keep their defaults."""
    hints = typing.get_type_hints(cls)

    def value(tp: Any, v: Any) -> Any:
        if dataclasses.is_dataclass(tp) and isinstance(v, dict):
            return dataclass_from_json(tp, v)
        return tuple(value(None, x) for x in v) if isinstance(v, list) else v

    return cls(**{f.name: value(hints[f.name], data[f.name])
                  for f in dataclasses.fields(cls) if f.name in data})


def _state_template(model_cfg: ModelConfig, run: RunConfig) -> TrainState:
    """The train state `train(run)` checkpoints (shapes only when under eval_shape)."""
    lr, _ = build_schedules(run.optim, 1)  # the schedule length does not shape the state
    return init_train_state(build_model(model_cfg, key=jax.random.key(0)),
                            build_optimizer(run.optim, lr), run.optim.global_batch_size,
                            jax.random.key(1), ema=run.optim.ema)


def _read_only(directory: str | os.PathLike[str], model_cfg: ModelConfig) -> Checkpointer:
    return Checkpointer(directory, CheckpointConfig(async_save=False), model_cfg,
                        read_only=True)


def _restore_step(d: Any, step: int, sharding: jax.sharding.Sharding | None,
                  ) -> tuple[TrainState, RunConfig, dict[str, Any] | None]:
    """The train state, run config and data fingerprint of one step; UnusableCheckpoint if
    it is damaged."""
    with _read_only(d, ModelConfig()) as probe:
        stored = probe.stored_config(step)
    if not stored.get("run"):
        raise ValueError(f"{d}: step {step} has no run config (not written by train.py)")
    try:
        model_cfg = dataclass_from_json(ModelConfig, stored["model"])
        run = dataclass_from_json(RunConfig, stored["run"])
    except (TypeError, ConfigError) as e:
        raise UnusableCheckpoint(step, f"config: {e}") from None
    template = eqx.filter_eval_shape(_state_template, model_cfg, run)
    with _read_only(d, model_cfg) as checkpointer:
        state = checkpointer.restore(template, step=step, sharding=sharding)
    return state, run, stored.get("data")


def restore_checkpoint(directory: str | Path, step: int | None = None, raw_weights: bool = False,
                       sharding: jax.sharding.Sharding | None = None) -> LoadedModel:
    """Evaluation weights of a checkpoint written by `trm.loop.train`: `step`, or the newest
    usable one (each damaged or non-finite newer step skipped with one notice line on
    stderr). Raises ValueError when the step, or every step, is unusable.
    """
    d = as_path(directory)  # a local path or a URL (gs://...)
    if d.is_file():
        raise FileNotFoundError(f"{d} is a file; give a checkpoint directory (a run's "
                                "checkpoints/ folder)")
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no such checkpoint directory")
    if d.name.isdigit() and (d / "state").is_dir():  # one step's own folder
        raise FileNotFoundError(f"{d} is the folder of one step; give its parent and the "
                                f"step: --checkpoint-dir {d.parent} --step {d.name}")
    with _read_only(d, ModelConfig()) as probe:
        steps = probe.all_steps()
    if not steps:
        hint = " (did you mean its checkpoints/ folder?)" if (d / "checkpoints").is_dir() else ""
        raise FileNotFoundError(f"{d}: no checkpoint steps in this directory{hint}")
    if step is not None and step not in steps:
        raise ValueError(f"{d}: no step {step} (steps kept: {', '.join(map(str, steps))})")
    if step is not None:
        state, run, data = _restore_step(d, step, sharding)
    else:
        step, (state, run, data) = newest_usable(
            steps, lambda s: _restore_step(d, s, sharding), str(d),
            notice=lambda line: print(line, file=sys.stderr))
    weights = "raw" if raw_weights or state.ema is None else "ema"
    model = state.model if weights == "raw" else eval_model(state)
    info = {"checkpoint_dir": str(d), "step": step, "weights": weights}
    return LoadedModel(model, info, run, data)


def read_official_config(path: str | Path) -> tuple[dict[str, Any], str]:
    """(official arch dict, loss type) from all_config.yaml, a JSON file or a fixture .npz."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such config file")
    doc = _read_config_document(p)
    if not isinstance(doc, dict):
        raise ValueError(f"{p}: expected a mapping of config fields")  # noqa: TRY004 (bad input)
    arch = doc.get("arch")
    if not isinstance(arch, dict):  # a fixture: {"model": {...}, "arch": "hrm", ...}
        fields = doc.get("model") or doc
        arch = {**fields, "name": arch} if isinstance(arch, str) else fields
    loss = arch.get("loss", {}) if isinstance(arch.get("loss"), dict) else {}
    loss_type = loss.get("loss_type") or doc.get("loss_type") or "stablemax_cross_entropy"
    return {k: v for k, v in arch.items() if k != "loss"}, loss_type


def _read_config_document(p: Path) -> Any:
    """The parsed file; ValueError naming it when it does not parse."""
    def unreadable(e: Exception) -> ValueError:
        return ValueError(f"{p}: not a readable config ({type(e).__name__}: "
                          f"{textwrap.shorten(str(e), 160)})")

    if is_npz(p):
        try:
            with np.load(p) as f:
                if "config_json" not in f.files:
                    raise ValueError(f"{p}: no config_json array in this .npz (give "
                                     "--official-config)")
                return json.loads(str(f["config_json"]))
        except (OSError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as e:
            raise unreadable(e) from None
    if p.suffix in (".yaml", ".yml"):
        import yaml  # only official all_config.yaml files need it
        try:
            return yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise unreadable(e) from None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON ({e})") from None


def import_official(weights: str | Path, config: str | Path | None,
                    data_metadata: Any | None = None) -> LoadedModel:
    """An official state dict under its architecture config. vocab_size, seq_len and
    num_puzzle_identifiers come from the config when it has them (fixtures do), else from the
    weights (the rows of the token and puzzle embeddings), else from the data set (as the
    official code takes them): whether the model can read the data set is then
    `check_compatible`'s to say."""
    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no such weights file")
    if config is None:
        if not is_npz(weights):
            raise ValueError("--official-config is needed unless the weights are an .npz "
                             "holding config_json")
        config = weights
    arch, loss_type = read_official_config(config)
    state_dict = load_state_dict_file(weights)
    arch = {**sizes_from_state_dict(state_dict), **arch}
    missing = [k for k in DATA_SET_FIELDS if k not in arch]
    if missing and data_metadata is None:
        raise ValueError(f"the official config lacks {', '.join(missing)}; give --data-dir")
    arch = {**{k: getattr(data_metadata, k) for k in missing}, **arch}
    model_cfg = config_from_official(dict(arch, halt_exploration_prob=0.0), loss_type)
    model = from_official_state_dict(state_dict, model_cfg)
    if not bool(all_finite(eqx.filter(model, eqx.is_array))):
        raise ValueError(f"{weights}: the weights hold non-finite numbers (NaN/Inf)")
    return LoadedModel(model, {"official_weights": str(weights), "official_config": str(config),
                               "weights": "official"})


def initial_model(path: str | Path, config: ModelConfig) -> tuple[ACTModel, list[str]]:
    """(model of `config` holding the weights at `path`, notice lines), to start a run from
    (--load-checkpoint, as official pretrain.py's load_checkpoint). `path`: a train.py
    checkpoint directory (its evaluation weights: EMA when the run kept one; the newest usable
    step, or the step of a step's own directory) or an official state dict (.npz, step_N,
    .pt). Every parameter must have this config's shape but the puzzle embedding table,
    which `resize_puzzle_table` fits to the data set. Raises ValueError / FileNotFoundError
    (StateDictError names a parameter) on anything else."""
    p = as_path(path)
    notes = []
    if p.is_dir():
        step = int(p.name) if p.name.isdigit() and not (p / "checkpoints").is_dir() else None
        loaded = restore_checkpoint(str(p.parent if step is not None else p), step)
        notes.append(f"starting from {loaded.info['checkpoint_dir']} step "
                     f"{loaded.info['step']} ({loaded.info['weights']} weights)")
        state_dict = to_official_state_dict(loaded.model)
    elif p.is_file():
        state_dict = load_state_dict_file(p)
        notes.append(f"starting from the official weights {p}")
    else:
        raise FileNotFoundError(f"--load-checkpoint {path}: no such checkpoint directory or "
                                "weights file")
    state_dict, resized = resize_puzzle_table(state_dict, config.num_puzzle_identifiers)
    try:
        model = from_official_state_dict(state_dict, config)
    except StateDictError as e:  # its names are the official ones, whatever the source
        raise StateDictError(f"--load-checkpoint {path} does not fit this run's model: "
                             f"{str(e).replace('official state dict', 'the source')}") from None
    if not bool(all_finite(eqx.filter(model, eqx.is_array))):
        raise ValueError(f"--load-checkpoint {path}: the weights hold non-finite numbers")
    return model, notes + ([resized] if resized else [])


def load_model(source: ModelSource, *, data_metadata: Any | None = None,
               sharding: jax.sharding.Sharding | None = None) -> LoadedModel:
    """The model named by `source` (exactly one of checkpoint_dir / official_weights)."""
    if (source.checkpoint_dir is None) == (source.official_weights is None):
        raise ValueError("give exactly one of --checkpoint-dir and --official-weights")
    if source.official_config is not None and source.official_weights is None:
        raise ValueError("--official-config describes --official-weights; a checkpoint "
                         "records its own config")
    if source.official_weights is not None and (source.step is not None or source.raw_weights):
        raise ValueError("--step and --raw-weights choose among a checkpoint's weights; "
                         "--official-weights holds one set")
    if source.checkpoint_dir is not None:
        loaded = restore_checkpoint(source.checkpoint_dir, source.step, source.raw_weights,
                                    sharding)
    else:
        loaded = import_official(source.official_weights, source.official_config, data_metadata)
        if sharding is not None:
            arrays, rest = eqx.partition(loaded.model, eqx.is_array)
            loaded.model = eqx.combine(jax.device_put(arrays, sharding), rest)
    if source.halt_max_steps is not None:
        cfg = dataclasses.replace(loaded.model.config, halt_max_steps=source.halt_max_steps)
        loaded.model = replace_config(loaded.model, cfg)
    loaded.info["model"] = to_json(loaded.model.config)
    return loaded


def check_data(source: ModelSource, loaded: LoadedModel, data_dir: str | Path) -> None:
    """Refuse (DataError, one line) a data set whose fingerprint differs from the checkpoint's
    training data unless source.allow_data_mismatch; print one warning line per doubt."""
    warn(fingerprint.check(loaded.data_fingerprint, data_dir,
                           allow_mismatch=source.allow_data_mismatch,
                           official=source.official_weights is not None))


def check_compatible(config: ModelConfig, metadata: Any) -> None:
    """Raise ValueError when the model cannot read the data set."""
    for name in ("vocab_size", "seq_len"):
        if getattr(config, name) != getattr(metadata, name):
            raise ValueError(f"the model has {name} {getattr(config, name)}, the data set "
                             f"{getattr(metadata, name)}")
    if config.num_puzzle_identifiers < metadata.num_puzzle_identifiers:
        raise ValueError(f"the model knows {config.num_puzzle_identifiers} puzzle identifiers, "
                         f"the data set uses {metadata.num_puzzle_identifiers}")
