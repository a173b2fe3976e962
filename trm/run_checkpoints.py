"""A training run's checkpoints: the data and settings checked on resume, the state resumed,
where the run goes on, averaged evaluation weights, and the save on SIGTERM."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import jax

from trm.checkpoint import Checkpointer, UnusableCheckpoint, average_trees, restore_last
from trm.cli import warn
from trm.integrity import all_finite
from trm.models import ACTModel
from trm.run_config import RunConfig
from trm.train_step import TrainState, eval_model


def check_resume_data(checkpointer: Checkpointer, data_dir: str | Path, contents: str,
                      allow_mismatch: bool) -> None:
    """Before a resume: the data set's fingerprint, then (same fingerprint) the digest of the
    arrays it trains on (`contents`, `data.fingerprint.contents`), against the newest
    checkpoint's (`data.fingerprint.check`, `check_contents`):
    DataError, or warning lines with `allow_mismatch` (--data.allow-mismatch). Checked first,
    as another data set would also show as another model config; an unreadable checkpoint is
    left to `resume`, which reports and skips it."""
    from data import fingerprint

    with contextlib.suppress(UnusableCheckpoint):
        stored = checkpointer.stored_config()
        allow = {"allow_mismatch": allow_mismatch, "flag": "--data.allow-mismatch"}
        warn(fingerprint.check(stored.get("data"), data_dir, **allow))
        if stored.get("data") == fingerprint.read(data_dir):  # else said above
            warn(fingerprint.check_contents(stored.get("data_contents"), contents, data_dir,
                                            **allow))


def resume(checkpointer: Checkpointer, state: TrainState, data_iter: Any) -> TrainState:
    """The state of the newest usable checkpoint; the unusable newer ones get one notice line
    each and are set aside under <dir>/unusable. ValueError when none is usable."""
    def notice(line: str) -> None:
        if jax.process_index() == 0:
            print(f"{line}; set aside in {checkpointer.directory}/unusable", file=sys.stderr)

    step, state = checkpointer.restore_newest_usable(state, data_iter, notice=notice)
    checkpointer.set_aside([s for s in checkpointer.all_steps() if s > step])
    return state


def warn_setting_changes(checkpointer: Checkpointer, step: int) -> None:
    """One warning line per setting the run goes on with other than checkpoint `step`'s (once
    the run is known to go on: `check_resume_point`)."""
    warn([f"resuming with a setting other than the checkpoint's: {change} (the run goes on "
          "with the requested value)" for change in checkpointer.setting_changes(step)])


def check_resume_point(start: int, last_step: int, cfg: RunConfig, total: int) -> bool:
    """Whether the run is already at its last step (nothing to train: one notice line); a
    resumed run (`start` > 0) says where it goes on from.
    ValueError when the checkpoint resumed from (step `start`) is past it (a shorter
    --optim.epochs or --max-steps than the run was saved with)."""
    if start < last_step:
        if start > 0 and jax.process_index() == 0:
            print(f"resuming: {cfg.checkpoint_dir} at step {start} of {last_step}", flush=True)
        return False
    budget = (f"--max-steps {cfg.max_steps}" if cfg.max_steps is not None and cfg.max_steps < total
              else f"--optim.epochs {cfg.optim.epochs} gives {total} steps")
    if start > last_step:
        raise ValueError(f"{cfg.checkpoint_dir}: the newest checkpoint is at step {start}, past "
                         f"this run's last step {last_step} ({budget}); ask for more steps, or "
                         "start a new run in another --run-dir")
    if jax.process_index() == 0:
        print(f"notice: {cfg.checkpoint_dir} is already at this run's last step {start} "
              f"({budget}); nothing to train", file=sys.stderr)
    return True


def averaged_eval_model(state: TrainState, checkpointer: Checkpointer, k: int) -> ACTModel:
    """Evaluation weights of `state`, averaged (SWA-style) with those of the last k - 1
    checkpoints saved before its step when k > 1."""
    if k <= 1:
        return eval_model(state)
    checkpointer.wait_until_finished()
    earlier = restore_last(checkpointer, state, k - 1, before=int(state.step))
    states = [*earlier, state]  # state is the template
    return average_trees([eval_model(s) for s in states])


def preemption_reached(steps_done: int) -> bool:
    """Multi-process runs: whether this is the step at which every process saves and stops
    after a SIGTERM to any of them. jax.distributed's preemption service owns SIGTERM there
    (`trm.preflight.initialize_distributed`); it sets the stop one past the furthest count
    of steps done when the notice came
    (`jax.experimental.multihost_utils.reached_preemption_sync_point`), so every process must
    call this once per step with the same count. False on one process (SIGTERM raises
    `trm.cli.Terminated` there) and when the service is disabled
    (`jax_enable_preemption_service`)."""
    if jax.process_count() == 1:
        return False
    from jax.experimental import multihost_utils

    try:
        return multihost_utils.reached_preemption_sync_point(steps_done)
    except RuntimeError:  # the preemption service is disabled
        return False


def save_before_stopping(checkpointer: Checkpointer, state: TrainState,
                         data_iter: Any) -> None:
    """On SIGTERM (a scheduler's stop or a preemption notice), save the step reached unless it
    is saved already, and say so on stderr. The processes of a multi-host run come here
    together, at the step `preemption_reached` agreed on."""
    step = int(state.step)
    checkpointer.wait_until_finished()  # a save in flight (of this step, maybe) ends first
    if step == 0 or step in checkpointer.all_steps():
        return
    say = jax.process_index() == 0
    if not bool(all_finite((state.model, state.ema, state.opt_state))):  # as a train step checks
        if say:
            print(f"notice: step {step} is not finite: not saved", file=sys.stderr, flush=True)
        return
    checkpointer.save(step, state, data_iter, force=True)
    checkpointer.wait_until_finished()
    if say:
        print(f"notice: saved checkpoint step {step} before stopping; rerun the command to "
              "resume", file=sys.stderr, flush=True)
