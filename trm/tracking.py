"""Experiment tracking: a thin wrapper over one Aim run (a no-op when tracking is off).

Only process 0 writes. The full RunConfig is stored as the run's `hparams` (nested, so Aim
queries read `run.hparams.optim.lr`). Metrics use plain names plus a context
(`track({"lm_loss": x}, step, {"subset": "train"})`), Aim's way to split train/test curves.
Browse with `aim up --repo <repo>`; reading runs back from Python needs them indexed first
(`aim up` does it, or `aim storage --repo <repo> reindex -y`). The repository may be a remote
tracking server, `aim://host:port` (`aim server --repo DIR --host HOST --port PORT`): every
host of a pod logs through it (only process 0 writes).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax

from data.common import check_can_write_in
from trm.config_diff import to_json
from trm.run_config import RunConfig, TrackingConfig

TRAIN: dict[str, str] = {"subset": "train"}


def hparams(run_config: RunConfig) -> dict[str, Any]:
    """The run config as JSON data (nested dicts, tuples as lists)."""
    return to_json(run_config)


def run_name(cfg: TrackingConfig) -> str:
    """cfg.run_name, else '<experiment> <local time>'."""
    return cfg.run_name or f"{cfg.experiment or 'trm'} {time.strftime('%Y-%m-%d %H:%M:%S')}"


def repo_data_dir(repo: str | Path) -> Path:
    """The directory holding a local Aim repository's data: `<root>/.aim`, where root is `repo`
    less a trailing ".aim" (Aim's own rule, `aim.sdk.utils.clean_repo_path`: `--repo .aim` and
    `--repo .` name one repository)."""
    from aim.sdk.utils import clean_repo_path

    return Path(clean_repo_path(repo), ".aim")


def _unreachable(repo: str, reason: str) -> ValueError:
    return ValueError(f"cannot reach the Aim server {repo} ({reason}); start it with "
                      "`aim server --repo DIR --host HOST --port PORT`")


def check_repo(repo: str) -> None:
    """ValueError when the local Aim repository path `repo` cannot hold one (its root or data
    directory is a file), or when nothing listens at an `aim://host:port` server's address;
    checked before a run starts."""
    if repo.startswith("aim://"):
        host, _, port = repo.removeprefix("aim://").rstrip("/").rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=10).close()
        except (OSError, ValueError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise _unreachable(repo, reason) from None
        return
    data = repo_data_dir(repo)
    for path in (data.parent, data):
        if path.exists() and not path.is_dir():
            raise ValueError(f"Aim repository {repo}: {path} is a file, not a directory")
    check_can_write_in(data, name=f"to the Aim repository {repo}")


def open_aim_run(repo: str, **kwargs: Any) -> Any:
    """A new `aim.Run` in `repo` (a directory or `aim://host:port`), or an existing one with
    `run_hash=`. An unreachable server, or no repository at `repo` for `run_hash=`, is a
    ValueError naming it."""
    import aim  # imported lazily: a disabled tracker never loads Aim

    check_repo(repo)
    if ("run_hash" in kwargs and not repo.startswith("aim://")
            and not repo_data_dir(repo).is_dir()):  # aim.Run would create an empty repository
        raise ValueError(f"no Aim repository at {repo} (for run {kwargs['run_hash']})")
    transport_log = logging.getLogger("aim.ext.transport")  # its failure is our one line
    level = transport_log.level
    transport_log.setLevel(logging.CRITICAL)
    try:
        return aim.Run(repo=repo, system_tracking_interval=None, capture_terminal_logs=False,
                       **kwargs)
    except RuntimeError as e:
        if repo.startswith("aim://"):
            raise _unreachable(repo, str(e)) from None
        raise
    finally:
        transport_log.setLevel(level)


class Tracker:
    """Logs scalars to an Aim run; every method is a no-op when `run` is None."""

    def __init__(self, run: Any = None) -> None:
        self.run = run

    @classmethod
    def open(cls, cfg: TrackingConfig, run_config: RunConfig) -> Tracker:
        """Start a run in `cfg.repo` (process 0, `cfg.track` on), else a no-op tracker."""
        if not cfg.track or jax.process_index() != 0:
            return cls(None)
        run = open_aim_run(cfg.repo, experiment=cfg.experiment or "trm")
        print(f"tracking: Aim run {run.hash} in {cfg.repo}", flush=True)
        run.name = run_name(cfg)
        for tag in cfg.tags:
            run.add_tag(tag)
        run["hparams"] = hparams(run_config)
        return cls(run)

    @property
    def enabled(self) -> bool:
        return self.run is not None

    @property
    def run_hash(self) -> str | None:
        return None if self.run is None else self.run.hash

    def track(self, metrics: Mapping[str, Any], step: int,
              context: Mapping[str, str] = TRAIN) -> None:
        """Log each scalar (Python/numpy/JAX) under its name at `step` in `context`."""
        if self.run is None:
            return
        for name, value in metrics.items():
            self.run.track(float(value), name=name, step=int(step), context=dict(context))

    def close(self) -> None:
        """Flush and close the run (safe to call twice)."""
        if self.run is not None:
            self.run.close()
            self.run = None

    def __enter__(self) -> Tracker:  # noqa: PYI034 (beartype cannot check Self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
