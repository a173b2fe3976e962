"""Read the study's runs back from an Aim repository.

Runs are invisible to Aim's readers until indexed, so `load_runs` indexes every run of the
repository first (what `aim storage --repo PATH reindex -y` does). Runs are keyed by their
config's `tracking.run_name`; several Aim runs with one name (a resumed run opens a new Aim
run) are merged in creation order, a later value of a step replacing an earlier one.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from trm.tracking import repo_data_dir


@dataclasses.dataclass
class Series:
    steps: np.ndarray
    values: np.ndarray
    times: np.ndarray


@dataclasses.dataclass
class RunRecord:
    """One named run: hparams (the RunConfig as nested dicts) and metric series."""

    name: str
    hparams: dict[str, Any]
    num_params: float | None
    seconds: float
    """Wall time of its trajectory (`trajectory_seconds`)."""
    series: dict[tuple[str, str], Series]
    """(metric name, context key) -> series; context keys are "train" and "eval/<set>"."""
    hashes: list[str]
    last_step: int | None = None
    """The step the latest Aim run was to end at (None: not recorded)."""

    def get(self, metric: str, context: str) -> Series | None:
        return self.series.get((metric, context))

    def hparam(self, path: str) -> Any:
        value: Any = self.hparams
        for part in path.split("."):
            if not isinstance(value, dict) or part not in value:
                return None
            value = value[part]
        return value


def context_key(context: dict[str, Any]) -> str:
    if context.get("subset") == "eval":
        return f"eval/{context.get('set', '?')}"
    if context.get("subset") == "train" and len(context) == 1:
        return "train"
    return json.dumps(context, sort_keys=True)


def open_repo(path: str | Path) -> Any:
    """The Aim repo at `path` (see `trm.tracking.repo_data_dir`); FileNotFoundError if none."""
    from aim import Repo

    if not repo_data_dir(path).is_dir():
        raise FileNotFoundError(f"no Aim repository at {path} (expected {repo_data_dir(path)})")
    return Repo.from_path(str(path))


def index_all(repo: Any) -> None:
    """Index every run so that Aim's readers see it."""
    from aim.sdk.index_manager import RepoIndexManager

    manager = RepoIndexManager.get_index_manager(repo)
    for run_hash in repo.list_all_runs():
        manager.index(run_hash)


def _merge(parts: list[Series]) -> Series:
    steps = np.concatenate([p.steps for p in parts])
    values = np.concatenate([p.values for p in parts])
    times = np.concatenate([p.times for p in parts])
    # a later part's step wins: keep the last occurrence of every step, sorted by step
    order = np.arange(len(steps))[::-1]
    _, first = np.unique(steps[order], return_index=True)
    keep = np.sort(order[first])
    keep = keep[np.argsort(steps[keep], kind="stable")]
    return Series(steps[keep], values[keep], times[keep])


def trajectory_seconds(segments: list[tuple[float, list[Series], int | None]]) -> float:
    """Wall seconds of one run from its Aim runs ("segments", in creation order), each given as
    (creation time, metric series, the step it resumed from or None).

    A segment counts from its creation to its last metric; when the next segment resumed from
    step s, only to its last metric at a step <= s: the steps redone after a restart (past the
    checkpoint it resumed from) count once.
    """
    total = 0.0
    for i, (created, series, _) in enumerate(segments):
        until = segments[i + 1][2] if i + 1 < len(segments) else None
        times = [s.times[s.steps <= until] if until is not None else s.times for s in series]
        total += max([created, *(float(t.max()) for t in times if len(t))]) - created
    return total


def load_runs(path: str | Path, experiment: str | None = None) -> dict[str, RunRecord]:
    """Run name -> merged record, for the runs of `experiment` (None: all) in the repo."""
    repo = open_repo(path)
    index_all(repo)
    found: dict[str, list[tuple[float, Any]]] = {}
    for run in repo.iter_runs():
        if experiment is not None and run.experiment != experiment:
            continue
        hparams = run.get("hparams") or {}
        name = (hparams.get("tracking") or {}).get("run_name") or run.name
        found.setdefault(name, []).append((run.creation_time, run))
    records = {}
    for name, runs in found.items():
        runs.sort(key=lambda x: x[0])
        parts: dict[tuple[str, str], list[Series]] = {}
        segments = []
        for created, run in runs:
            series = []
            for metric in run.metrics():
                steps, (values, _, times) = metric.data.items_list()
                series.append(Series(np.asarray(steps, np.int64),
                                     np.asarray(values, np.float64), np.asarray(times, np.float64)))
                parts.setdefault((metric.name, context_key(metric.context.to_dict())),
                                 []).append(series[-1])
            start = run.get("start_step")
            segments.append((created, series, None if start is None else int(start)))
        latest = runs[-1][1]
        params, last_step = latest.get("num_params"), latest.get("last_step")
        records[name] = RunRecord(
            name=name, hparams=latest.get("hparams") or {},
            num_params=None if params is None else float(params),
            seconds=trajectory_seconds(segments),
            series={k: _merge(v) for k, v in parts.items()}, hashes=[r.hash for _, r in runs],
            last_step=None if last_step is None else int(last_step))
    return records
