"""The training loop: data -> train step -> metrics, evaluation, checkpoints, tracking.

`train(cfg)` is what `python train.py` runs. Host metrics are fetched one step late (step N
is dispatched before step N-1's metrics are read), so there is no per-step device sync beyond
one step in flight.

Faults: the run and checkpoint directories must be writable, with room for checkpoints,
before anything is built. A non-finite loss, or a step whose new state (network, EMA,
optimiser moments, puzzle table) is not finite, stops the run before that state is saved, so
every checkpoint on disk is finite. A resume skips unusable checkpoints (unreadable, failing
their checksums, non-finite) with one notice line each and sets them aside. A failed save
stops the run with one `error:` line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from data.storage import as_path
from trm.checkpoint import Checkpointer
from trm.cli import RunStopped, Terminated, sigterm_deferred, warn
from trm.config import DATA_SET_FIELDS, ModelConfig, flag_name
from trm.curriculum import linear_anneal, phase_config, phase_index
from trm.eval_source import initial_model
from trm.models import ACTModel, build_model, replace_config
from trm.optim import build_optimizer, build_schedules
from trm.preflight import (
    check_batches,
    check_free_space,
    check_writable,
    initialize_distributed,
    prepare_data,
    run_lock,
    split_cpu,
    with_absolute_data_dir,
)
from trm.progress import Reporter
from trm.run_checkpoints import (
    averaged_eval_model,
    check_resume_data,
    check_resume_point,
    preemption_reached,
    resume,
    save_before_stopping,
    warn_setting_changes,
)
from trm.run_config import RunConfig
from trm.schedule import total_steps
from trm.tracking import Tracker, check_repo
from trm.train_step import (
    TrainState,
    batch_sharding,
    init_train_state,
    jit_train_step,
    make_mesh,
    make_train_step,
    normalize_metrics,
    state_shardings,
)


class NonFiniteLossError(RunStopped):
    """Training produced a NaN/Inf loss or a non-finite state."""


@dataclasses.dataclass
class TrainResult:
    state: TrainState
    steps: int
    """Optimiser steps done in total (including those before a resume)."""
    train_metrics: list[dict[str, float]]
    """Normalised train metrics of the steps run in this call."""
    eval_metrics: dict[str, dict[str, float]]
    """Last evaluation: set name -> metrics."""


def _stop_message(error: NonFiniteLossError, checkpointer: Checkpointer) -> str:
    checkpointer.wait_until_finished()
    steps = checkpointer.all_steps()
    kept = (f"the last good checkpoint, step {steps[-1]} in {checkpointer.directory}, is kept"
            if steps else "no checkpoint was saved")
    return f"{error}; stopping before saving it, {kept}"


def require_arc_data(metadata: Any, data_dir: str | Path) -> None:
    """ValueError unless `metadata` is an ARC data set's (the ARC evaluator votes over its
    augmented copies of each task)."""
    if metadata.name != "arc":
        raise ValueError(f"the ARC evaluator needs an ARC data set, {data_dir} is "
                         f"{metadata.name}")


def data_set_mismatches(model: ModelConfig, metadata: Any) -> list[str]:
    """'--model.seq-len 900 (the data set has 81)' for each of vocab_size and seq_len where
    the preset (flags cannot set them: `trm.run_config.parse_cli`) differs from the data set:
    a recipe meant for another kind of data. (num_puzzle_identifiers is always the data
    set's.)"""
    return [f"{flag_name('model.' + k)} {getattr(model, k)} (the data set has "
            f"{getattr(metadata, k)})" for k in ("seq_len", "vocab_size")
            if getattr(model, k) != getattr(metadata, k)]


def model_config_for(model: ModelConfig, metadata: Any) -> ModelConfig:
    """The model config with the data set's vocabulary, length and puzzle count."""
    return dataclasses.replace(model, **{k: getattr(metadata, k) for k in DATA_SET_FIELDS})


def step_budget(cfg: RunConfig, metadata: Any) -> tuple[int, int | None]:
    """(total optimiser steps of the schedule, steps between evaluations or None)."""
    o = cfg.optim

    def steps_for(epochs: int) -> int:
        return total_steps(epochs, metadata.total_groups, metadata.mean_puzzle_examples,
                           o.global_batch_size)

    total = steps_for(o.epochs)
    every = None if cfg.eval.eval_interval is None else max(1, steps_for(cfg.eval.eval_interval))
    return total, every


def evaluates_at(step: int, every: int | None, total: int) -> bool:
    """Whether `step` is an interval evaluation: a multiple of `every`, except in the last,
    partial interval of the schedule (epochs / eval_interval evaluations in all, the last at
    the final step, when `every` does not divide `total`)."""
    return every is not None and step % every == 0 and total - step >= every


def to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This host's rows of a batch -> global arrays sharded on the batch axis."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(batch[k]))
            for k in ("inputs", "labels", "puzzle_identifiers")}


def evaluate(model: ACTModel, data_dir: Path, cfg: RunConfig, mesh: Mesh, *,
             progress: bool = False) -> dict[str, dict[str, Any]]:
    """Official metrics, per-step curves and, with eval.evaluators=("arc",), ARC pass@K on
    every eval set: set name -> metrics. The ARC submission of the latest evaluation is
    written to <run_dir>/arc_submission_<set>.json. `progress`: a bar per set, removed when
    the set is done."""
    from trm.arc_eval import write_submission
    from trm.eval_run import evaluate_split  # imported here: it imports this module

    batch_size = cfg.eval_batch_size
    results = {}
    for split in cfg.eval.eval_sets:
        r = evaluate_split(model, data_dir, split, mesh, batch_size=batch_size,
                           arc="arc" in cfg.eval.evaluators, progress=progress, leave=False)
        if r.submission is not None and jax.process_index() == 0:
            write_submission(as_path(cfg.run_dir) / f"arc_submission_{split}.json",
                             r.submission)
        results[split] = r.flat()
    return results


def _fetch(pending: tuple[int, Any] | None, global_batch: int) -> tuple[int, dict[str, float]]:
    step, sums = pending
    sums = jax.device_get(sums)
    state_finite = bool(sums.pop("state_finite", True))
    raw = {k: float(sums.pop(k)) for k in ("lr", "exploration_prob") if k in sums}
    metrics = normalize_metrics(sums, global_batch) | raw
    if not math.isfinite(metrics["lm_loss"]) or not math.isfinite(metrics["q_halt_loss"]):
        raise NonFiniteLossError(f"non-finite loss at step {step} "
                                 f"(lm_loss={metrics['lm_loss']}, "
                                 f"q_halt_loss={metrics['q_halt_loss']})")
    if not state_finite:
        raise NonFiniteLossError(f"non-finite weights or optimiser moments after step {step} "
                                 f"(lm_loss={metrics['lm_loss']:.4g})")
    return step, metrics


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}


def with_model_config(tree: Any, config: ModelConfig) -> Any:
    """Every TRM inside `tree` (model, EMA, optimiser moments) under `config`."""
    return jax.tree.map(lambda x: replace_config(x, config) if isinstance(x, ACTModel) else x, tree,
                        is_leaf=lambda x: isinstance(x, ACTModel))


def train(cfg: RunConfig, *, progress: bool = True) -> TrainResult:
    """Run (or resume) the training run described by `cfg`. RunFailed when another run holds
    its checkpoint directory (`trm.preflight.run_lock`)."""
    with contextlib.ExitStack() as held:
        return _train(cfg, progress, held)


def _train(cfg: RunConfig, progress: bool, held: contextlib.ExitStack) -> TrainResult:
    from data import fingerprint
    from data.pipeline import load_metadata, train_iterator

    cfg = with_absolute_data_dir(cfg)
    split = split_cpu(cfg.mesh, cfg.optim.global_batch_size, cfg.eval.batch_size)
    initialize_distributed(cfg.mesh, cfg, preemption_sync=True)
    mesh = make_mesh(None if cfg.mesh.data == -1 else cfg.mesh.data, flag="--mesh.data")
    if split is not None and jax.default_backend() == "cpu" and jax.process_index() == 0:
        into = "one XLA device" if split == 1 else f"{split} XLA devices"
        print(f"devices: the CPU as {into} (--mesh.cpu-devices, --mesh.data)")
    check_batches(cfg, mesh.devices.size)
    if cfg.tracking.track:
        check_repo(cfg.tracking.repo)
    for directory in dict.fromkeys((cfg.run_dir, cfg.checkpoint_dir)):
        check_writable(directory)
    data_dir = prepare_data(cfg, progress=progress)
    metadata = load_metadata(data_dir)
    if "arc" in cfg.eval.evaluators:  # before any work, not at the first evaluation
        require_arc_data(metadata, data_dir)
    mismatches = data_set_mismatches(cfg.model, metadata)
    if mismatches and cfg.data.generate == "none":  # a generated set follows its config
        line = (f"{data_dir} is a {metadata.name} data set: {', '.join(mismatches)}; the "
                "model takes the data set's values (a preset meant for other data?)")
        warn([line])
    model_cfg = model_config_for(cfg.model, metadata)
    total, eval_every = step_budget(cfg, metadata)
    if total < 1:
        raise ValueError(f"--optim.epochs {cfg.optim.epochs} of {data_dir} "
                         f"({metadata.examples_per_epoch} examples per epoch) make no step of "
                         f"--optim.global-batch-size {cfg.optim.global_batch_size}: use a "
                         "smaller batch or more epochs")
    last_step = total if cfg.max_steps is None else min(total, cfg.max_steps)
    o = cfg.optim
    phases = cfg.curriculum.phases or ((0.0, model_cfg.H_cycles, model_cfg.L_cycles),)

    lr, puzzle_lr = build_schedules(o, total)
    optimizer = build_optimizer(o, lr)
    h = cfg.halting
    exploration = (None if h.exploration_start is None
                   else linear_anneal(h.exploration_start, h.exploration_end, total))
    key = jax.random.key(cfg.seed)

    def make_state(initial: ACTModel | None = None) -> TrainState:
        if initial is None:
            initial = build_model(model_cfg, key=jax.random.fold_in(key, 0))
        return init_train_state(initial, optimizer, o.global_batch_size,
                                jax.random.fold_in(key, 1), ema=o.ema)

    # built under jit straight into its global shardings (works across hosts)
    shapes = eqx.filter_eval_shape(make_state)
    check_free_space(cfg.checkpoint_dir, sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(
        shapes) if isinstance(x, jax.ShapeDtypeStruct)),
        kept=cfg.checkpoint.keep_last + (cfg.best_metric is not None))
    shardings = state_shardings(shapes, mesh)
    state = jax.jit(make_state, out_shardings=shardings)()
    data_iter = train_iterator(data_dir, global_batch_size=o.global_batch_size,
                               seed=cfg.data.seed, num_aug=cfg.data.num_aug,
                               num_workers=cfg.data.num_workers)
    held.callback(data_iter.close)  # stops the Grain workers, frees their shared memory

    held.enter_context(run_lock(cfg.checkpoint_dir))  # all checks passed: the run starts
    contents = fingerprint.contents(data_dir)  # read once: saved and checked on resume
    checkpointer = Checkpointer(cfg.checkpoint_dir, dataclasses.replace(
                                    cfg.checkpoint, keep_best_metric=cfg.best_metric),
                                model_cfg, cfg,
                                data_fingerprint=fingerprint.read(data_dir),
                                data_contents=contents)
    if cfg.checkpoint.resume and checkpointer.all_steps():
        check_resume_data(checkpointer, data_dir, contents, cfg.data.allow_mismatch)
        state = resume(checkpointer, state, data_iter)
    elif checkpointer.all_steps():  # a fresh run would stop at its first save, on their steps
        checkpointer.close()
        raise ValueError(f"{cfg.checkpoint_dir} holds checkpoints (steps "
                         f"{', '.join(map(str, checkpointer.all_steps()))}) and "
                         "--checkpoint.no-resume asks for a fresh run: remove them, or give "
                         "another --run-dir")
    elif cfg.load_checkpoint is not None:  # a new run from other weights
        initial, notes = initial_model(cfg.load_checkpoint, model_cfg)
        warn(notes, kind="notice")
        state = jax.jit(make_state, out_shardings=shardings)(jax.tree.map(np.asarray, initial))
    start = int(state.step)
    # a stop during the evaluation of the step resumed from (saved without its results)
    eval_cut_short = (0 < start <= last_step and bool(cfg.eval.eval_sets)
                      and (start == last_step or evaluates_at(start, eval_every, total))
                      and not checkpointer.evaluated(start))
    if check_resume_point(start, last_step, cfg, total) and not eval_cut_short:
        checkpointer.close()
        return TrainResult(state=state, steps=start, train_metrics=[], eval_metrics={})
    if start > 0:
        warn_setting_changes(checkpointer, start)

    def compile_phase(phase_cfg: ModelConfig, state: TrainState):
        state = with_model_config(state, phase_cfg)
        return state, jit_train_step(make_train_step(
            mesh=mesh, optimizer=optimizer, lr_schedule=lr, puzzle_lr_schedule=puzzle_lr,
            puzzle_weight_decay=o.puzzle_emb_weight_decay, ema_rate=o.ema_rate,
            global_batch=o.global_batch_size, exploration_schedule=exploration,
            step_penalty=h.step_penalty), state, mesh)

    tracker = Tracker.open(cfg.tracking, cfg)
    if tracker.enabled:
        tracker.run["num_params"] = int(sum(x.size for x in jax.tree.leaves(
            state.model) if hasattr(x, "size")))
        tracker.run["start_step"] = start  # resumed from (sweeps: redone steps count once)
        tracker.run["last_step"] = last_step  # the step this run stops at when it finishes
    evals: dict[str, dict[str, float]] = {}
    bar = tqdm(total=last_step, initial=start, disable=not progress or jax.process_index() != 0,
               unit="step", dynamic_ncols=True)
    report = Reporter(tracker, bar, global_batch=o.global_batch_size,
                      examples_per_epoch=metadata.examples_per_epoch, last_step=last_step,
                      best_metric=cfg.best_metric)
    pending, phase_now, step_fn = None, None, None
    # one process: SIGTERM raises Terminated, held back while a step or a save is handed over;
    # several: jax.distributed's preemption service owns SIGTERM (see preemption_reached)
    hold_sigterm = sigterm_deferred if jax.process_count() == 1 else contextlib.nullcontext

    def evaluate_step(step: int, to_save: TrainState) -> dict[str, dict[str, float]]:
        model = averaged_eval_model(to_save, checkpointer, cfg.eval.average_last_k)
        results = _scalar_evals(evaluate(model, data_dir, cfg, mesh, progress=progress))
        report.evaluation(step, results)
        return results

    try:
        if eval_cut_short:
            if jax.process_index() == 0:
                tqdm.write(f"notice: evaluating step {start} first: it was saved without the "
                           "evaluation due at it (the run stopped)", file=sys.stderr)
            evals = evaluate_step(start, with_model_config(state, model_cfg))
            checkpointer.record_evaluation(start, _flat(evals))
        for step in range(start + 1, last_step + 1):
            phase_cfg = phase_config(model_cfg, phases[phase_index(phases, step - 1, total)])
            if phase_cfg != phase_now:
                if progress and jax.process_index() == 0:
                    cycles = ("" if phase_cfg.arch == "transformers_baseline" else  # no recursion
                              f" (H_cycles {phase_cfg.H_cycles}, L_cycles {phase_cfg.L_cycles})")
                    tqdm.write(f"compiling the train step{cycles} for step {step}")
                state, step_fn = compile_phase(phase_cfg, state)
                phase_now = phase_cfg
            with hold_sigterm():  # the state and the data position move together
                batch = to_global(next(data_iter), mesh)
                state, sums = step_fn(state, batch)
            if preemption_reached(step - start):  # every process is at this step
                raise Terminated
            checkpointer.check_for_errors()  # a failed async save stops the run now
            if pending is not None:
                report.train_step(*_fetch(pending, o.global_batch_size))
            pending = (step, sums)
            is_eval = step == last_step or evaluates_at(step, eval_every, total)
            if is_eval or (cfg.checkpoint.every_n_steps and
                           step % cfg.checkpoint.every_n_steps == 0):
                report.train_step(*_fetch(pending, o.global_batch_size))
                pending = None
                to_save = with_model_config(state, model_cfg)
                if is_eval and cfg.eval.eval_sets:
                    evals = evaluate_step(step, to_save)
                # only an evaluated step carries metrics: --checkpoint.keep-best-metric ranks
                # the weights that were evaluated
                flat = _flat(evals) if is_eval else {}
                with hold_sigterm():  # a save is handed to orbax whole
                    checkpointer.save(step, to_save, data_iter, metrics=flat or None, force=True)
                report.restart_clock()
        if pending is not None:
            report.train_step(*_fetch(pending, o.global_batch_size))
        checkpointer.close()
    except NonFiniteLossError as e:
        message = _stop_message(e, checkpointer)
        checkpointer.close()
        raise NonFiniteLossError(message) from None
    except Terminated:
        bar.close()
        with hold_sigterm():  # a second SIGTERM would cut the saves short
            with contextlib.suppress(Exception):  # the first error is the one to report
                save_before_stopping(checkpointer, with_model_config(state, model_cfg),
                                     data_iter)
            with contextlib.suppress(Exception):
                checkpointer.close()
        raise
    except BaseException:
        with hold_sigterm(), contextlib.suppress(Exception):
            checkpointer.close()
        raise
    finally:
        bar.close()
        tracker.close()
    return TrainResult(state=state, steps=int(state.step), train_metrics=report.history,
                       eval_metrics=evals)


def _flat(evals: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """{"test/exact_accuracy": ...}: the checkpoint metrics of an evaluation's results."""
    return {f"{split}/{k}": v for split, m in evals.items() for k, v in m.items()}


def _scalar_evals(results: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    return {split: _scalars(m) for split, m in results.items()}

