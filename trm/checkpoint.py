"""Checkpoints: a thin wrapper over orbax's CheckpointManager.

Each step directory holds three items:
- `state`: the array leaves of any PyTree (Equinox modules, optax states, EMA, step counter as
  an array); non-array leaves (activation functions, static config) come back from the
  restore template, so they are never written;
- `data_iter`: a Grain iterator's position, for an exact resume (optional);
- `config`: JSON `{"model": ModelConfig fields, "run": RunConfig fields, "data": the training
  data set's fingerprint (data/fingerprint.py) or null}`. A restore whose requested
  ModelConfig differs from the stored one is refused, naming the fields.
Retention: the `keep_last` most recent steps, plus the best step by `keep_best_metric`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, TypeVar

import equinox as eqx
import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as policies

from data.storage import as_path, is_url
from trm.config import ModelConfig, flag_name, upgrade_model_fields
from trm.run_config import CheckpointConfig, RunConfig

T = TypeVar("T")
_ITEMS = ("state", "data_iter", "config")


def to_json(config: Any) -> Any:
    """A dataclass as plain JSON data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


STATE_SHAPING = ("optim.optimizer", "optim.ema", "optim.freeze_weights",
                 "optim.global_batch_size")
"""RunConfig fields that shape the saved state (optimiser moments, EMA, ACT carry)."""


def config_differences(stored: dict[str, Any], requested: ModelConfig) -> list[str]:
    """'--model.field stored X, requested Y' for each differing ModelConfig field.

    A field missing from `stored` (written before the field existed) counts as its default.
    """
    wanted = to_json(requested)
    defaults = to_json(ModelConfig())
    return [f"{flag_name('model.' + k)} stored {stored.get(k, defaults[k])!r}, requested {v!r}"
            for k, v in wanted.items() if stored.get(k, defaults[k]) != v]


def run_differences(stored: dict[str, Any] | None, requested: RunConfig | None) -> list[str]:
    """The same for the STATE_SHAPING run settings (none when either side is unknown)."""
    if stored is None or requested is None:
        return []
    wanted, defaults = to_json(requested), to_json(RunConfig())

    def get(tree: dict[str, Any], path: str) -> Any:
        section, name = path.split(".")
        return tree.get(section, {}).get(name, defaults[section][name])

    return [f"{flag_name(p)} stored {get(stored, p)!r}, requested {get(wanted, p)!r}"
            for p in STATE_SHAPING if get(stored, p) != get(wanted, p)]


def _is_array_like(x: Any) -> bool:
    return eqx.is_array(x) or isinstance(x, jax.ShapeDtypeStruct)


def abstract_arrays(template: T, sharding: jax.sharding.Sharding | None = None) -> T:
    """Array leaves of `template` (arrays or ShapeDtypeStructs, e.g. from
    `eqx.filter_eval_shape`) as ShapeDtypeStructs with a sharding; other leaves None.

    A leaf keeps its own sharding; otherwise `sharding`, else the first local device.
    """
    default = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def to_abstract(x: Any) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(x.shape, x.dtype,
                                    sharding=getattr(x, "sharding", None) or default)

    return jax.tree.map(to_abstract, eqx.filter(template, _is_array_like))


def _preservation(cfg: CheckpointConfig) -> policies.LatestN | policies.AnyPreservationPolicy:
    latest = policies.LatestN(n=cfg.keep_last)
    if cfg.keep_best_metric is None:
        return latest
    key, larger_is_better = cfg.keep_best_metric, cfg.best_mode == "max"
    worst = -math.inf if larger_is_better else math.inf

    def metric(metrics: dict[str, float]) -> float:
        return float(metrics.get(key, worst))

    # BestN keeps the last n after an ascending sort (reverse=True: the smallest).
    best = policies.BestN(get_metric_fn=metric, reverse=not larger_is_better, n=1,
                          keep_checkpoints_without_metrics=False)
    return policies.AnyPreservationPolicy([latest, best])


class Checkpointer:
    """Save/restore (state, data iterator, configs) by step under one directory.

    `save` may return before the write finishes (async); call `wait_until_finished()` before
    reading the files and `close()` at the end (or use it as a context manager).
    """

    def __init__(self, directory: str | os.PathLike[str], cfg: CheckpointConfig,
                 model_config: ModelConfig, run_config: RunConfig | None = None,
                 data_fingerprint: dict[str, Any] | None = None) -> None:
        self.model_config = model_config
        self._run_config = run_config
        self._config_json = {"model": to_json(model_config),
                             "run": None if run_config is None else to_json(run_config),
                             "data": data_fingerprint}
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=cfg.async_save, preservation_policy=_preservation(cfg),
            create=True)
        self._manager = ocp.CheckpointManager(
            as_path(directory if is_url(directory) else os.path.abspath(directory)),
            options=options, item_names=_ITEMS)

    def save(self, step: int, state: Any, data_iter: grain.DatasetIterator | None = None,
             metrics: dict[str, float] | None = None, force: bool = False) -> bool:
        """Write `state`'s arrays (+ iterator position, configs) as `step`; True if saved.

        `metrics` (plain floats, e.g. {"test/exact_accuracy": 0.8}) rank the best step.
        """
        items: dict[str, Any] = {
            "state": ocp.args.StandardSave(eqx.filter(state, eqx.is_array)),
            "config": ocp.args.JsonSave(self._config_json)}
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
        if metrics is not None:
            metrics = {k: float(v) for k, v in metrics.items()}
        return self._manager.save(step, args=ocp.args.Composite(**items), metrics=metrics,
                                  force=force)

    def stored_config(self, step: int | None = None) -> dict[str, Any]:
        """The `{"model": ..., "run": ..., "data": ...}` JSON saved with `step` (default:
        latest), model fields in today's names; "data" is absent from checkpoints written
        before fingerprints."""
        step = self._step_or_latest(step)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            config=ocp.args.JsonRestore()))["config"]
        if "model" in restored:
            restored = {**restored, "model": upgrade_model_fields(restored["model"])}
        return restored

    def restore(self, template: T, step: int | None = None,
                data_iter: grain.DatasetIterator | None = None,
                sharding: jax.sharding.Sharding | None = None) -> T:
        """The state saved at `step` (default: latest), shaped like `template`.

        `template`: a concrete state or `eqx.filter_eval_shape(make_state, ...)`; its
        non-array leaves are reused. `data_iter`, if given, is moved to the saved position in
        place. Raises ValueError if the stored model config differs from this one's.
        """
        step = self._step_or_latest(step)
        stored = self.stored_config(step)
        diffs = (config_differences(stored["model"], self.model_config)
                 + run_differences(stored.get("run"), self._run_config))
        if diffs:
            raise ValueError(f"checkpoint step {step} in {self.directory} was written with "
                             f"other settings: {'; '.join(diffs)} (pass the stored values, "
                             f"or start a new --run-dir)")
        items: dict[str, Any] = {
            "state": ocp.args.StandardRestore(abstract_arrays(template, sharding))}
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return eqx.combine(restored["state"], eqx.filter(template, _is_array_like,
                                                         inverse=True))

    def _step_or_latest(self, step: int | None) -> int:
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        return step

    @property
    def directory(self) -> str:
        return str(self._manager.directory)

    def latest_step(self) -> int | None:
        """Most recent saved step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps currently kept, ascending."""
        return sorted(self._manager.all_steps())

    def wait_until_finished(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending writes and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpointer:  # noqa: PYI034 (beartype cannot check Self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()



def average_trees(trees: list[T]) -> T:
    """Leafwise mean of identically structured PyTrees (None leaves stay None)."""
    if not trees:
        raise ValueError("nothing to average")
    return jax.tree.map(lambda *xs: sum(xs) / len(xs), *trees)


def restore_last(checkpointer: Checkpointer, template: T, k: int) -> list[T]:
    """The states of the last `k` kept checkpoints (fewer if fewer are kept)."""
    return [checkpointer.restore(template, step=s) for s in checkpointer.all_steps()[-k:]]
