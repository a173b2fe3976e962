"""What a training run reports while it runs: train metrics (history and Aim), the progress
bar, and one terminal line per evaluation.

Only measured values are reported: a step on which no row halted has no accuracy, exact
accuracy, q_halt accuracy or steps (`trm.train_step.normalize_metrics` leaves them out), so
Aim gets no point for them at that step and the bar keeps showing the accuracy of the most
recently halted rows ("-" before any row halted). Evaluation lines are written with
`tqdm.write`, above the bar, on process 0.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import jax
from tqdm import tqdm

from trm.cli import warn
from trm.tracking import Tracker


def elapsed(seconds: float) -> str:
    """h:mm:ss (or m:ss under an hour)."""
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def eval_line(step: int, last_step: int, epoch: float, split: str,
              metrics: Mapping[str, float], seconds: float) -> str:
    """One evaluation as a terminal line: exact and token accuracy after all supervision steps,
    and the adaptive halting policy (stop at the first q_halt > 0): its mean number of steps
    and exact accuracy; on ARC, pass@1 and pass@2 (the paper's metric). A split with no
    known outputs (ARC's hidden test set) has nothing to score."""
    head = f"eval step {step}/{last_step} epoch {epoch:.1f} {split}: "
    if metrics.get("count", 1) == 0:
        return head + f"no known outputs to score, predictions only [{elapsed(seconds)}]"
    return (head + f"exact {metrics.get('exact_accuracy', 0.0):.4f} "
            f"token {metrics.get('accuracy', 0.0):.4f} "
            f"halting {metrics.get('adaptive_mean_steps', 0.0):.2f} steps "
            f"(exact {metrics.get('adaptive_exact_accuracy', 0.0):.4f}) "
            + "".join(f"{k} {metrics[k]:.4f} " for k in ("pass@1", "pass@2") if k in metrics)
            + f"[{elapsed(seconds)}]")


class Reporter:
    """Collects a run's train metrics and reports them and its evaluations.

    `examples_per_epoch` converts steps into epochs (step x global_batch / examples_per_epoch).
    """

    def __init__(self, tracker: Tracker, bar: tqdm, *, global_batch: int,
                 examples_per_epoch: int, last_step: int, best_metric: str | None = None
                 ) -> None:
        self.tracker, self.bar = tracker, bar
        self.best_metric = best_metric
        """--checkpoint.keep-best-metric, checked against the first evaluation's metrics."""
        self.global_batch, self.examples_per_epoch = global_batch, examples_per_epoch
        self.last_step = last_step
        self.history: list[dict[str, float]] = []
        self.accuracy: float | None = None
        """Token accuracy of the most recently halted rows (None before any halted)."""
        self.start = self.tick = time.perf_counter()

    def restart_clock(self) -> None:
        """Exclude what ran since the last step (evaluation, saving) from examples/s and from
        the bar's rate (s/step) and elapsed time."""
        self.tick = time.perf_counter()
        self.bar.unpause()

    def train_step(self, step: int, metrics: dict[str, float]) -> None:
        """Record one step's normalised metrics: history, Aim (context train), the bar."""
        now = time.perf_counter()
        metrics["examples_per_s"] = self.global_batch / max(now - self.tick, 1e-9)
        self.tick = now
        self.history.append(metrics)
        self.tracker.track(metrics, step)
        self.accuracy = metrics.get("accuracy", self.accuracy)
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(loss=f"{metrics['lm_loss']:.3f}",
                             acc="-" if self.accuracy is None else f"{self.accuracy:.3f}",
                             ex_s=f"{metrics['examples_per_s']:.0f}", refresh=False)

    def evaluation(self, step: int, evals: Mapping[str, Mapping[str, float]]) -> None:
        """Track each set's metrics (context eval, set) and print one line per set; after the
        first, a warning when --checkpoint.keep-best-metric names none of the metrics (a
        misspelt name would keep no step as the best)."""
        epoch = step * self.global_batch / max(self.examples_per_epoch, 1)
        split, _, name = (self.best_metric or "").partition("/")
        measured = evals.get(split, {})
        if self.best_metric and measured.get("count", 1) and name not in measured:
            warn([(f"--checkpoint.keep-best-metric {self.best_metric}: no such metric of the "
                   f"evaluation (it has {', '.join(sorted(measured))}); no step is kept as the "
                   "best")])
        self.best_metric = None  # checked once
        for split, metrics in evals.items():
            self.tracker.track(metrics, step, {"subset": "eval", "set": split})
            if jax.process_index() == 0:
                tqdm.write(eval_line(step, self.last_step, epoch, split, metrics,
                                     time.perf_counter() - self.start))
