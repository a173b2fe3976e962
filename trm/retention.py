"""Which checkpoint steps orbax keeps: the latest, the best by --checkpoint.keep-best-metric
and those whose metrics are unreadable; and orbax's manager reading such metrics as none."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as policies

from trm.cli import short_reason
from trm.run_config import CheckpointConfig


def best_metric(cfg: CheckpointConfig) -> Callable[[dict[str, float]], float] | None:
    """The value of --checkpoint.keep-best-metric in a step's metrics (the worst without it)."""
    if cfg.keep_best_metric is None:
        return None
    key = cfg.keep_best_metric
    worst = -math.inf if cfg.best_mode == "max" else math.inf

    def metric(metrics: dict[str, float]) -> float:
        return float(metrics.get(key, worst))
    return metric


@dataclasses.dataclass
class KeepSteps:
    """Preserves the steps in `steps` (a set that may grow later; orbax's CustomSteps copies
    its steps when made)."""

    steps: set[int]

    def should_preserve(self, checkpoints: Any, *, context: Any) -> list[bool]:
        return [c.step in self.steps for c in checkpoints]


def preservation(cfg: CheckpointConfig, unranked: set[int],
                  ) -> policies.LatestN | policies.AnyPreservationPolicy:
    """The `keep_last` latest steps, and with a best metric the best step and the `unranked`
    steps (their metrics are unreadable: one of them may be the best)."""
    latest = policies.LatestN(n=cfg.keep_last)
    metric = best_metric(cfg)
    if metric is None:
        return latest
    # BestN keeps the last n after an ascending sort (reverse=True: the smallest).
    best = policies.BestN(get_metric_fn=metric, reverse=cfg.best_mode != "max", n=1,
                          keep_checkpoints_without_metrics=False)
    return policies.AnyPreservationPolicy([latest, best, KeepSteps(unranked)])


class MetricsTolerantManager(ocp.CheckpointManager):
    """orbax's CheckpointManager reading a step's unreadable metrics file (garbled JSON, not
    an object of numbers) as no metrics, reported to `unreadable(step, reason)`: orbax
    reads every step's metrics when it loads the directory and raised, so one damaged file
    stopped every restore and resume. Overrides orbax's one reader of that file (the
    orbax-checkpoint versions pinned in pyproject.toml)."""

    def __init__(self, *args: Any, unreadable: Callable[[int, str], None], **kwargs: Any):
        self._unreadable = unreadable  # before __init__: it reads the metrics
        super().__init__(*args, **kwargs)

    def _get_metrics(self, step: int) -> Any:
        try:
            metrics = super()._get_metrics(step)
        except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
            self._unreadable(step, short_reason(e))
            return None
        if metrics is not None and not (isinstance(metrics, dict) and all(
                isinstance(v, int | float) for v in metrics.values())):
            self._unreadable(step, "not a JSON object of numbers")
            return None
        return metrics
