"""Checkpoints: a thin wrapper over orbax's CheckpointManager.

Each step directory holds three items:
- `state`: the array leaves of any PyTree (Equinox modules, optax states, EMA, step counter as
  an array); non-array leaves (activation functions, static config) come back from the
  restore template, so they are never written;
- `data_iter`: a Grain iterator's position, for an exact resume (optional);
- `config`: JSON `{"model": ModelConfig fields, "run": RunConfig fields, "data": the training
  data set's fingerprint (data/fingerprint.py) or null, "data_contents": the digest of its
  arrays (`fingerprint.contents`, checked on resume) or null, "evaluated": whether it was
  saved with its evaluation's metrics (orbax keeps the metrics), "digests": ...}`. A restore whose
  requested ModelConfig (or state-shaping run setting) differs from the stored one is refused,
  naming the flags; `digests` (`trm.integrity`) are checked after a restore.
Retention (`trm.retention`): the `keep_last` most recent steps, the best step by
`keep_best_metric`, and the steps whose metrics file is unreadable.

A step that cannot be read, does not match its digests or holds non-finite numbers raises
`UnusableCheckpoint`; `restore_newest_usable` then falls back to the newest usable step.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import equinox as eqx
import grain
import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from data.common import atomic_file
from data.storage import as_path, first_unreadable, is_url
from trm.cli import RunFailed, short_reason
from trm.config import ModelConfig, upgrade_model_fields
from trm.config_diff import (
    MODEL_TRAJECTORY,
    TRAJECTORY,
    config_differences,
    run_differences,
    to_json,
)
from trm.integrity import all_finite, digest_mismatches, digests
from trm.orbax_noise import stderr_kept_on_success
from trm.retention import MetricsTolerantManager, best_metric, preservation
from trm.run_config import CheckpointConfig, RunConfig

T = TypeVar("T")
R = TypeVar("R")


_ITEMS = ("state", "data_iter", "config")


def peek_run_configs(directory: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The "run" part of every step's config JSON under a local checkpoint directory, read as
    plain files (orbax's `<step>/config/metadata`) without starting JAX; steps whose config
    cannot be read are left out, and a URL or missing directory gives []. For settings needed
    before JAX starts (the CPU device split); the restore itself reads and checks them again."""
    if is_url(str(directory)) or not os.path.isdir(directory):
        return []
    runs = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name, _ITEMS[2], "metadata")
        if not name.isdigit() or not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                run = json.load(f).get("run")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(run, dict):
            runs.append(run)
    return runs


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


class UnusableCheckpoint(ValueError):
    """A saved step that cannot be read, fails its checksums or holds non-finite numbers."""

    def __init__(self, step: int, reason: str) -> None:
        super().__init__(f"checkpoint step {step} is unusable: {reason}")
        self.step, self.reason = step, reason


class SaveFailed(RunFailed):
    """Writing a checkpoint failed (read-only or full storage, ...)."""




def newest_usable(steps: list[int], load: Callable[[int], R], directory: str,
                  notice: Callable[[str], None]) -> tuple[int, R]:
    """(step, load(step)) for the newest of `steps` (ascending) that `load` reads without
    UnusableCheckpoint, after one `notice` line per newer step skipped. Raises ValueError
    naming every step's fault when none is usable, FileNotFoundError when `steps` is empty."""
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    skipped: list[UnusableCheckpoint] = []
    for step in reversed(steps):
        try:
            result = load(step)
        except UnusableCheckpoint as e:
            skipped.append(e)
            continue
        for e in skipped:
            notice(f"notice: {e} ({directory}); using step {step}")
        return step, result
    raise ValueError(f"no usable checkpoint in {directory}: "
                     + "; ".join(f"step {e.step}: {e.reason}" for e in skipped))


class Checkpointer:
    """Save/restore (state, data iterator, configs) by step under one directory.

    `save` may return before the write finishes (async); call `wait_until_finished()` before
    reading the files and `close()` at the end (or use it as a context manager).
    `read_only`: never write, delete or clean up anything in the directory (an evaluation
    reading the checkpoints of a training that is still running).
    """

    def __init__(self, directory: str | os.PathLike[str], cfg: CheckpointConfig,
                 model_config: ModelConfig, run_config: RunConfig | None = None,
                 data_fingerprint: dict[str, Any] | None = None, read_only: bool = False,
                 data_contents: str | None = None) -> None:
        self.model_config = model_config
        self._run_config = run_config
        self._writing: int | None = None  # the last step handed to the manager
        self._config_json = {"model": to_json(model_config),
                             "run": None if run_config is None else to_json(run_config),
                             "data": data_fingerprint, "data_contents": data_contents}
        self._unreadable_metrics: set[int] = set()
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=cfg.async_save,
            preservation_policy=preservation(cfg, self._unreadable_metrics),
            # with best_fn orbax also writes each step's metrics to disk (else it ranks only
            # the steps saved by this process: a resumed run lost its best step)
            best_fn=best_metric(cfg), best_mode=cfg.best_mode,
            create=not read_only, read_only=read_only,
            # a save cut short (full disk, kill) leaves a temporary directory; a reader must
            # not remove it: it may be the save a running training is writing
            cleanup_tmp_directories=not read_only,
            # an unwritable directory then fails in `save` itself: created in a background
            # thread, its failure left the next save waiting for a signal for minutes
            async_options=ocp.AsyncOptions(create_directories_asynchronously=False))
        self._read_only = read_only
        self._root = as_path(directory if is_url(directory) else os.path.abspath(directory))
        self._manager = MetricsTolerantManager(self._root, options=options, item_names=_ITEMS,
                                 unreadable=self._metrics_unreadable)

    def _metrics_unreadable(self, step: int, reason: str) -> None:
        """One notice per damaged metrics file (a training's: an evaluation needs no
        metrics); the step counts as not evaluated and is kept (`trm.retention.preservation`)."""
        if step in self._unreadable_metrics:
            return
        self._unreadable_metrics.add(step)
        if not self._read_only and jax.process_index() == 0:
            print(f"notice: {self._metrics_file(step)}: unreadable metrics ({reason}); step "
                  f"{step} is kept, unranked by --checkpoint.keep-best-metric (delete it "
                  "if it is not wanted)", file=sys.stderr, flush=True)

    def save(self, step: int, state: Any, data_iter: grain.DatasetIterator | None = None,
             metrics: dict[str, float] | None = None, force: bool = False) -> bool:
        """Write `state`'s arrays (+ iterator position, configs) as `step`; True if saved.

        `metrics` (plain floats, e.g. {"test/exact_accuracy": 0.8}) rank the best step.
        Raises SaveFailed (with the cause in one line) when the write fails; an async write
        that fails is reported by the next `save`, `wait_until_finished` or `close`.
        """
        arrays = eqx.filter(state, eqx.is_array)
        if metrics is not None:
            metrics = {k: float(v) for k, v in metrics.items()}
        items: dict[str, Any] = {
            "state": ocp.args.StandardSave(arrays),
            "config": ocp.args.JsonSave(self._config_json | {"digests": digests(arrays),
                                                             "evaluated": metrics is not None})}
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
        self.wait_until_finished()  # orbax waits for the previous write anyway
        with self._save_errors(step):
            saved = self._manager.save(step, args=ocp.args.Composite(**items), metrics=metrics,
                                       force=force)
        self._writing = step
        return saved

    def check_for_errors(self) -> None:
        """Raise SaveFailed if a background write has failed (cheap: call it every step)."""
        with self._save_errors(self._writing):
            self._manager.check_for_errors()

    @contextlib.contextmanager
    def _save_errors(self, step: int | None) -> Iterator[None]:
        try:
            yield
        except Exception as e:  # orbax and tensorstore raise many kinds
            what = "a checkpoint" if step is None else f"checkpoint step {step}"
            raise SaveFailed(f"writing {what} to {self.directory} failed: "
                             f"{short_reason(e)}") from e

    def stored_config(self, step: int | None = None) -> dict[str, Any]:
        """The `{"model": ..., "run": ..., "data": ...}` JSON saved with `step` (default:
        latest), model fields in today's names; "data" ("data_contents") is absent from
        checkpoints written before fingerprints (content digests). Raises UnusableCheckpoint
        when it cannot be read."""
        step = self._step_or_latest(step)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                config=ocp.args.JsonRestore()))["config"]
        except Exception as e:  # orbax and tensorstore raise many kinds
            raise UnusableCheckpoint(step, f"config: {short_reason(e)}") from e
        if not isinstance(restored, dict) or not isinstance(restored.get("model"), dict):
            raise UnusableCheckpoint(step, "config: not a {model, run} mapping")
        restored = {**restored, "model": upgrade_model_fields(restored["model"])}
        return restored

    def restore(self, template: T, step: int | None = None,
                data_iter: grain.DatasetIterator | None = None,
                sharding: jax.sharding.Sharding | None = None) -> T:
        """The state saved at `step` (default: latest), shaped like `template`.

        `template`: a concrete state or `eqx.filter_eval_shape(make_state, ...)`; its
        non-array leaves are reused. `data_iter`, if given, is moved to the saved position in
        place. Raises ValueError if the stored model config or a state-shaping run setting
        differs from this one's, UnusableCheckpoint if the step cannot be read, fails its
        digests or holds a non-finite number.
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
        try:
            with stderr_kept_on_success():
                arrays = self._manager.restore(step, args=ocp.args.Composite(**items))["state"]
        except Exception as e:  # orbax and tensorstore raise many kinds
            unreadable = first_unreadable(self._root / str(step))
            raise UnusableCheckpoint(step, short_reason(e) if unreadable is None else
                                     f"permission denied: cannot read {unreadable}") from e
        damaged = digest_mismatches(stored["digests"], arrays) if "digests" in stored else []
        if damaged:
            raise UnusableCheckpoint(step, f"{len(damaged)} array(s) do not match their "
                                           f"checksums ({', '.join(damaged[:3])})")
        if not bool(all_finite(arrays)):
            raise UnusableCheckpoint(step, "it holds non-finite numbers (NaN/Inf)")
        return eqx.combine(arrays, eqx.filter(template, _is_array_like, inverse=True))

    def evaluated(self, step: int) -> bool:
        """Whether `step` has its evaluation's metrics: saved with them (`save(metrics=...)`,
        recorded in its config) or given them after its save (`record_evaluation`); True
        for a checkpoint written before that was recorded, False for an unreadable one or
        one whose metrics file is damaged."""
        if step in self._unreadable_metrics:
            return False
        if self._metrics_file(step).exists():
            return True
        try:
            stored = self.stored_config(step)
        except UnusableCheckpoint:
            return False
        return bool(stored.get("evaluated", True))

    def record_evaluation(self, step: int, metrics: dict[str, float]) -> None:
        """Give saved `step` the metrics of its evaluation run after its save (a stop had cut
        it short) where orbax keeps a step's metrics, which it reads when it loads the steps
        (it has no call to add them to a saved step): --checkpoint.keep-best-metric ranks
        the step, and a rerun does not evaluate it again. Process 0 writes; all reload."""
        if jax.process_index() == 0:
            with atomic_file(self._metrics_file(step)) as tmp:
                tmp.write_text(json.dumps({k: float(v) for k, v in metrics.items()}))
        self._unreadable_metrics.discard(step)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("trm late evaluation recorded")
        self._manager.reload()

    def _metrics_file(self, step: int) -> epath.Path:
        """Where orbax keeps the metrics of `step` (its `metrics` item)."""
        return self._root / str(step) / "metrics" / "metrics"

    def setting_changes(self, step: int) -> list[str]:
        """The MODEL_TRAJECTORY model fields and TRAJECTORY run settings of this run that differ
        from those saved with `step` (a step that `restore` accepted)."""
        stored = self.stored_config(step)
        return (config_differences(stored["model"], self.model_config, MODEL_TRAJECTORY)
                + run_differences(stored.get("run"), self._run_config, TRAJECTORY))

    def restore_newest_usable(self, template: T, data_iter: grain.DatasetIterator | None = None,
                              sharding: jax.sharding.Sharding | None = None,
                              notice: Callable[[str], None] = print) -> tuple[int, T]:
        """(step, state) of the newest step that `restore` accepts (see `newest_usable`)."""
        return newest_usable(self.all_steps(), lambda step: self.restore(
            template, step=step, data_iter=data_iter, sharding=sharding), self.directory, notice)

    def set_aside(self, steps: list[int]) -> None:
        """Move `steps` to <directory>/unusable/<step> (kept for inspection; out of the
        manager's sight, so retention and new saves ignore them). Process 0 moves them."""
        if steps and jax.process_index() == 0:
            aside = as_path(self.directory) / "unusable"
            aside.mkdir(parents=True, exist_ok=True)
            for step in steps:
                target = aside / str(step)
                if target.exists():
                    target = aside / f"{step}-{len(list(aside.iterdir()))}"
                (as_path(self.directory) / str(step)).rename(target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("trm checkpoint set_aside")
        self._manager.reload()

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
        """Block until pending writes are done; SaveFailed if one failed."""
        with self._save_errors(self._writing):
            self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending writes and release the manager; SaveFailed if a write failed."""
        try:
            self.wait_until_finished()
        finally:
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


def restore_last(checkpointer: Checkpointer, template: T, k: int, before: int) -> list[T]:
    """The states of the last `k` kept checkpoints before step `before` (fewer if fewer are
    kept)."""
    steps = [s for s in checkpointer.all_steps() if s < before]
    return [checkpointer.restore(template, step=s) for s in steps[-k:]]
