"""The study's plots (matplotlib, Agg): accuracy vs parameters, vs L_cycles / H_cycles with the
train-test gap, the H x L heatmap, Pareto fronts (accuracy vs training time, vs inference
steps), learning curves and steps to a target accuracy.

One-factor slices (accuracy vs L_cycles, ...) take the selected entries whose config differs
from the baseline only in that factor, so the baseline point joins every slice.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from sweeps.analyze import Row
from sweeps.catalog import Experiment, baseline
from sweeps.configs import diff

H, L = "model.H_cycles", "model.L_cycles"


@functools.cache
def _changed(e: Experiment) -> frozenset[str]:
    return frozenset(diff(baseline(), e.config()))


def _runs(rows: Sequence[Row], needs: Sequence[str] = ("test_exact",)) -> list[Row]:
    """Found rows, one per run, that have every metric in `needs`."""
    seen: dict[str, Row] = {}
    for r in rows:
        if r.found and all(r.metrics.get(k) is not None for k in needs):
            seen.setdefault(r.run, r)
    return list(seen.values())


def _by_group(rows: Sequence[Row], needs: Sequence[str] = ()) -> dict[str, list[Row]]:
    """Group name -> its found rows (one per run): a shared run appears in each group."""
    groups: dict[str, list[Row]] = {}
    for r in rows:
        groups.setdefault(r.entry.group.name, []).append(r)
    return {g: found for g, rs in groups.items() if (found := _runs(rs, needs))}


def _slice(rows: Sequence[Row], fields: set[str], needs: Sequence[str] = ("test_exact",)
           ) -> list[Row]:
    return [r for r in _runs(rows, needs) if _changed(r.entry) <= fields]


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pareto(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats (smaller x and larger y), by x."""
    order = np.lexsort((-y, x))
    front, best = [], -np.inf
    for i in order:
        if y[i] > best:
            front.append(i)
            best = y[i]
    return np.asarray(front, int)


def plot_params(rows: Sequence[Row], out: Path) -> Path | str:
    by_group = _by_group(rows, ("test_exact", "params"))
    if not by_group:
        return "accuracy vs parameters: no run with parameters and an evaluation"
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for group, rs in by_group.items():
        rs = sorted(rs, key=lambda r: r.metrics["params"])
        params = [r.metrics["params"] for r in rs]
        ax.plot(params, [r.metrics["test_exact"] for r in rs], marker="o", label=group,
                linestyle="-" if len(set(params)) > 1 else "none")
        for r in rs:
            ax.annotate(r.run, (r.metrics["params"], r.metrics["test_exact"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.set(xscale="log", xlabel="parameters", ylabel="exact accuracy",
           title="Accuracy vs parameters")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out / "accuracy_vs_params.png")


def plot_cycles(rows: Sequence[Row], out: Path) -> Path | str:
    panels = [(f, _slice(rows, {f}, ("test_exact",))) for f in (L, H)]
    panels = [(f, rs) for f, rs in panels if len({r.value(f) for r in rs}) >= 2]
    if not panels:
        return ("accuracy vs cycles: needs runs varying only L_cycles or only H_cycles "
                "(exp02a, exp02b)")
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.3), squeeze=False)
    for ax, (field, rs) in zip(axes[0], panels):
        rs = sorted(rs, key=lambda r: r.value(field))
        x = np.array([r.value(field) for r in rs], float)
        test = np.array([r.metrics["test_exact"] for r in rs], float)
        train = np.array([np.nan if r.metrics.get("train_exact") is None
                          else r.metrics["train_exact"] for r in rs], float)
        ax.plot(x, test, "o-", label="test")
        ax.plot(x, train, "s--", label="train")
        ax.fill_between(x, test, train, alpha=0.15, label="train-test gap")
        name = field.rsplit(".", 1)[-1]
        ax.set(xlabel=name, ylabel="exact accuracy", title=f"Accuracy vs {name}", xticks=x)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return _save(fig, out / "accuracy_vs_cycles.png")


def plot_heatmap(rows: Sequence[Row], out: Path) -> Path | str:
    rs = _slice(rows, {H, L})
    hs = sorted({r.value(H) for r in rs})
    ls = sorted({r.value(L) for r in rs})
    if len(hs) < 2 or len(ls) < 2:
        return "H x L heatmap: needs runs varying H_cycles and L_cycles (tn_grid)"
    grid = np.full((len(hs), len(ls)), np.nan)
    for r in rs:
        grid[hs.index(r.value(H)), ls.index(r.value(L))] = r.metrics["test_exact"]
    fig, ax = plt.subplots(figsize=(1.3 * len(ls) + 2.5, 1.1 * len(hs) + 1.8))
    im = ax.imshow(grid, cmap="viridis", origin="lower", aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, "-" if np.isnan(v) else f"{v:.3f}", ha="center", va="center",
                color="white" if np.isnan(v) or v < np.nanmean(grid) else "black", fontsize=9)
    ax.set(xticks=range(len(ls)), xticklabels=ls, yticks=range(len(hs)), yticklabels=hs,
           xlabel="L_cycles (n)", ylabel="H_cycles (T)", title="Exact accuracy, H x L")
    fig.colorbar(im, ax=ax)
    return _save(fig, out / "heatmap_H_L.png")


def _plot_front(rows: Sequence[Row], out: Path, x_key: str, y_key: str, xlabel: str,
                ylabel: str, title: str, filename: str) -> Path | str:
    runs = _runs(rows, (x_key, y_key))
    if not runs:
        return f"{title}: no run has {x_key} and {y_key}"
    x = np.array([r.metrics[x_key] for r in runs], float)
    y = np.array([r.metrics[y_key] for r in runs], float)
    front = _pareto(x, y)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter(x, y, c="tab:blue", label="runs")
    ax.step(x[front], y[front], "r-", where="post", label="Pareto front")
    for r, xi, yi in zip(runs, x, y):
        ax.annotate(r.run, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out / filename)


def plot_curves(rows: Sequence[Row], out: Path, eval_set: str) -> Path | str:
    by_group = _by_group(rows)
    if not by_group:
        return "learning curves: no run found"
    cols = min(3, len(by_group))
    nrows = -(-len(by_group) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.5 * cols, 4 * nrows), squeeze=False)
    for ax, (group, rs) in zip(axes.flat, by_group.items()):
        for i, r in enumerate(rs):
            color = f"C{i % 10}"
            test = r.record.get("exact_accuracy", f"eval/{eval_set}")
            train = r.record.get("exact_accuracy", "train")
            if test is not None:
                ax.plot(test.steps, test.values, "o-", color=color, label=r.run)
            if train is not None:
                ax.plot(train.steps, train.values, "-", color=color, alpha=0.3)
        ax.set(xlabel="step", ylabel="exact accuracy", title=f"{group} (train faint)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(by_group):]:
        ax.axis("off")
    return _save(fig, out / "learning_curves.png")


def plot_steps_to_target(rows: Sequence[Row], out: Path, target: float) -> Path | str:
    runs = _runs(rows, ("test_exact",))
    if not runs:
        return "steps to target: no run has an evaluation"
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(runs) + 1.5))
    names = [r.run for r in runs]
    values = [r.metrics.get("steps_to_target") for r in runs]
    ax.barh(names, [0 if v is None else v for v in values], color="tab:green")
    for i, v in enumerate(values):
        if v is None:
            ax.text(0, i, f"  not reached (best {runs[i].metrics['best_exact']:.3f})",
                    va="center", fontsize=8)
    ax.set(xlabel="optimiser steps", title=f"Steps to exact accuracy >= {target}")
    ax.invert_yaxis()
    return _save(fig, out / "steps_to_target.png")


def make_plots(rows: Sequence[Row], out: Path, *, eval_set: str = "test", target: float = 0.85
               ) -> tuple[list[Path], list[str]]:
    """Every plot the selected rows allow: (files written, reasons for the ones skipped)."""
    makers: list[Callable[[], Path | str]] = [
        lambda: plot_params(rows, out),
        lambda: plot_cycles(rows, out),
        lambda: plot_heatmap(rows, out),
        lambda: _plot_front(rows, out, "seconds", "test_exact", "training wall time (s)",
                            "exact accuracy", "Accuracy vs training time", "pareto_time.png"),
        lambda: _plot_front(rows, out, "inference_steps", "adaptive_exact",
                            "mean inference steps (q_halt > 0 policy)",
                            "exact accuracy (q_halt > 0 policy)",
                            "Accuracy vs inference steps", "pareto_inference_steps.png"),
        lambda: plot_curves(rows, out, eval_set),
        lambda: plot_steps_to_target(rows, out, target),
    ]
    done, skipped = [], []
    for make in makers:
        result = make()
        (done if isinstance(result, Path) else skipped).append(result)
    return done, skipped
