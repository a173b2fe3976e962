"""`python -m sweeps analyze PATTERN`: per-group tables (markdown + CSV) and the study's plots
from the runs in an Aim repository.

"Accuracy" is the exact (whole-puzzle) accuracy of the eval set (`--set`, default test) at the
last evaluation; train accuracy is the mean over the last 10% of logged train steps (rows that
halted), the gap is train - test. Inference steps are the mean steps of the q_halt > 0 policy
at evaluation (`adaptive_mean_steps`).
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sweeps.aimdata import RunRecord, Series, load_runs
from sweeps.catalog import Experiment, canonical
from sweeps.configs import get_path
from sweeps.runner import Settings, run_config
from trm.run_config import RunConfig

COLUMNS: dict[str, str] = {
    "params": "params",
    "test_exact": "exact acc",
    "best_exact": "best exact acc",
    "test_token": "token acc",
    "train_exact": "train exact acc",
    "gap": "train-test gap",
    "adaptive_exact": "adaptive exact acc",
    "inference_steps": "inference steps",
    "train_halt_steps": "train halting steps",
    "steps": "steps",
    "seconds": "time (s)",
    "examples_per_s": "examples/s",
    "steps_to_target": "steps to target",
}


@dataclasses.dataclass
class Row:
    entry: Experiment
    run: str
    config: RunConfig
    """The config the run has (or would have) as planned."""
    record: RunRecord | None
    metrics: dict[str, float | None]

    @property
    def found(self) -> bool:
        return self.record is not None

    @property
    def unfinished(self) -> str | None:
        """'step 13 of 16' for a found run that stopped before its last step (killed,
        failed, still running), 'no step logged' for one that logged none; else None."""
        if self.record is None or self.record.last_step is None:
            return None
        steps = self.metrics.get("steps")
        if steps is None:
            return "no step logged"
        return f"step {steps:.0f} of {self.record.last_step}" if (
            steps < self.record.last_step) else None

    def value(self, path: str) -> Any:
        """A config value of the run as tracked (as planned, when the run is missing)."""
        tracked = self.record.hparam(path) if self.record else None
        return get_path(self.config, path) if tracked is None else _tuples(tracked)


def _tuples(value: Any) -> Any:
    """JSON lists (how hparams store tuples) back to tuples."""
    return tuple(map(_tuples, value)) if isinstance(value, list) else value


def _window_mean(s: Series | None, fraction: float = 0.1) -> float | None:
    if s is None or not len(s.values):
        return None
    n = max(1, math.ceil(len(s.values) * fraction))
    return float(np.mean(s.values[-n:]))


def _last(s: Series | None) -> float | None:
    return None if s is None or not len(s.values) else float(s.values[-1])


def summarize(r: RunRecord, eval_set: str = "test", target: float = 0.85
              ) -> dict[str, float | None]:
    """The table's numbers for one run (None where the run logged nothing to compute it)."""
    ev = f"eval/{eval_set}"
    exact = r.get("exact_accuracy", ev)
    train_exact = _window_mean(r.get("exact_accuracy", "train"))
    test_exact = _last(exact)
    reached = None
    if exact is not None:
        hits = np.nonzero(exact.values >= target)[0]
        reached = float(exact.steps[hits[0]]) if len(hits) else None
    speed = r.get("examples_per_s", "train")
    train_steps = r.get("lm_loss", "train") or r.get("exact_accuracy", "train")
    return {
        "params": r.num_params,
        "test_exact": test_exact,
        "best_exact": None if exact is None else float(np.max(exact.values)),
        "test_token": _last(r.get("accuracy", ev)),
        "train_exact": train_exact,
        "gap": None if train_exact is None or test_exact is None else train_exact - test_exact,
        "adaptive_exact": _last(r.get("adaptive_exact_accuracy", ev)),
        "inference_steps": _last(r.get("adaptive_mean_steps", ev)),
        "train_halt_steps": _window_mean(r.get("steps", "train")),
        "steps": None if train_steps is None else float(train_steps.steps[-1]),
        "seconds": r.seconds,
        # the first logged step includes compilation: the median ignores it
        "examples_per_s": None if speed is None else float(np.median(speed.values)),
        "steps_to_target": reached,
    }


def build_rows(entries: Sequence[Experiment], settings: Settings, runs: dict[str, RunRecord],
               eval_set: str, target: float) -> list[Row]:
    rows = []
    for e in entries:
        name = canonical(e).name
        record = runs.get(name)
        rows.append(Row(e, name, run_config(e, settings), record,
                        summarize(record, eval_set, target) if record else {}))
    return rows


def _fmt(key: str, v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if key == "params":
        return f"{v / 1e6:.2f}M"
    if key in ("steps", "steps_to_target", "seconds", "examples_per_s"):
        return f"{v:.0f}"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def group_table(rows: Sequence[Row]) -> tuple[list[str], list[list[str]], list[list[Any]]]:
    """(header, formatted rows, raw rows) of one group."""
    fields = rows[0].entry.group.fields
    header = ["entry", "run", *(f.rsplit(".", 1)[-1] for f in fields), *COLUMNS.values()]
    shown, raw = [], []
    for r in rows:
        values = [r.value(f) for f in fields]
        run = (f"{r.run} (missing)" if not r.found else
               f"{r.run} (unfinished: {r.unfinished})" if r.unfinished else r.run)
        metrics = [r.metrics.get(k) for k in COLUMNS]
        raw.append([r.entry.name, run, *values, *metrics])
        shown.append([r.entry.name, run, *map(str, values),
                      *(_fmt(k, v) for k, v in zip(COLUMNS, metrics))])
    return header, shown, raw


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_tables(rows: Sequence[Row], out: Path, target: float) -> tuple[str, list[Path]]:
    """One markdown + CSV table per group; returns (report markdown section, files)."""
    groups: dict[str, list[Row]] = {}
    for r in rows:
        groups.setdefault(r.entry.group.name, []).append(r)
    text, files = [], []
    for name, group_rows in groups.items():
        g = group_rows[0].entry.group
        header, shown, raw = group_table(group_rows)
        table = markdown(header, shown)
        (out / f"{name}.md").write_text(f"# {name}: {g.title}\n\n{g.question}\n\n{table}\n")
        with open(out / f"{name}.csv", "w", newline="") as f:
            csv.writer(f).writerows([header, *([("" if v is None else v) for v in row]
                                               for row in raw)])
        files += [out / f"{name}.md", out / f"{name}.csv"]
        text.append(f"## {name}: {g.title} ({g.variable})\n\n{g.question}\n\n{table}\n")
    note = f"Steps to target: first evaluation with exact accuracy >= {target}."
    return "\n".join(text) + f"\n{note}\n", files


def analyze(entries: Sequence[Experiment], settings: Settings, out: str | Path, *,
            experiment: str | None, eval_set: str = "test", target: float = 0.85,
            say: Any = print) -> list[Path]:
    """Tables and plots of `entries` from the Aim repo `settings.repo` into `out`; returns the
    files written. Runs of `experiment` (None: any) are matched by name to the planned runs.

    Raises ValueError when none of the runs is in the repository; missing ones are listed.
    """
    from sweeps.plots import make_plots

    runs = load_runs(settings.repo, experiment)
    rows = build_rows(entries, settings, runs, eval_set, target)
    missing = list(dict.fromkeys(r.run for r in rows if not r.found))
    where = f"{settings.repo}" + (f" (experiment {experiment})" if experiment else "")
    if not any(r.found for r in rows):
        other = "--scale cpu" if settings.scale is None else "no --scale (the study's)"
        raise ValueError(f"none of the {len(missing)} runs is in the Aim repository {where}: "
                         f"{', '.join(missing)}; if they ran with other settings, give the "
                         f"same ones (e.g. {other}, --steps)")
    logged = sorted({context.removeprefix("eval/") for r in rows if r.found
                     for _, context in r.record.series if context.startswith("eval/")})
    if logged and eval_set not in logged:
        raise ValueError(f"no run found logged evaluations of the set {eval_set!r} "
                         f"(--set); they logged: {', '.join(logged)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    section, files = write_tables(rows, out, target)
    plots, skipped = make_plots(rows, out, eval_set=eval_set, target=target)
    files += plots
    lines = [f"# TRM study analysis ({where})", ""]
    unfinished = list(dict.fromkeys(f"{r.run} ({r.unfinished})" for r in rows if r.unfinished))
    if missing:
        lines += [f"**Missing runs ({len(missing)})**: {', '.join(missing)}", ""]
    if unfinished:
        lines += [f"**Unfinished runs ({len(unfinished)})**: {', '.join(unfinished)}", ""]
    lines += [section, "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    lines += [f"- {s}" for s in skipped]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    files.append(out / "report.md")
    found = len({r.run for r in rows if r.found})
    say(f"{found} runs found in {where}; wrote {len(files)} files to {out}")
    if missing:
        say(f"missing {len(missing)} run{'s' * (len(missing) != 1)} (no Aim run with that "
            f"name): {', '.join(missing)}")
    if unfinished:
        say(f"unfinished {len(unfinished)} run{'s' * (len(unfinished) != 1)} (stopped before "
            f"their last step; their figures are those of the last logged step): "
            f"{', '.join(unfinished)}")
    for s in skipped:
        say(f"plot skipped: {s}")
    return files
