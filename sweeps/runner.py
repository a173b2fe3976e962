"""Turn catalog entries into runs: final configs, `python train.py ...` command lines (a shell
script of them: `sweeps.script`), and a runner (one after another or N at a time, per-run logs, finished runs
skipped, failures reported).

A run is finished when `<run_dir>/DONE` exists (written after `train.py` exits 0; it holds the
command line). Entries that share a config (see `catalog.canonical`) share one run, named after
the first of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from etils import epath

from data.storage import as_path, is_url
from sweeps.catalog import PRESET, Experiment, aliases, canonical
from sweeps.configs import override, tyro_flags
from sweeps.launch import launch_argv
from sweeps.scale import scale_cpu
from trm.config import ConfigError, flag_name
from trm.config_diff import to_json
from trm.presets import PRESETS
from trm.run_config import RunConfig, parse_cli
from trm.tracking import repo_data_dir

TRAIN_PY = Path(__file__).resolve().parents[1] / "train.py"
MARKER = "DONE"
LOG = "train.log"
LOG_ROOT = "runs/sweep-logs"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Where and how the selected runs go."""

    scale: str | None = None
    """None: the study as specified; "cpu": `scale.scale_cpu` smoke runs."""
    root: str | None = None
    """Parent of the run directories (None: runs/study, or runs/study-cpu at CPU scale)."""
    repo: str = ".aim"
    """Aim repository."""
    track: bool | None = None
    """Log to Aim (None: on at full scale, off at CPU scale)."""
    steps: int = 16
    """Optimiser steps per run at CPU scale."""
    launcher: str | None = None
    """Launcher template (`sweeps.launch`) starting each run on every host; such runs get
    mesh.distributed (None: `python train.py` here)."""

    def __post_init__(self) -> None:
        if self.scale not in (None, "cpu"):
            raise ValueError(f"unknown scale {self.scale!r} (cpu)")
        if self.launcher is not None:
            launch_argv(self.launcher, ["train.py"])  # a bad template fails here

    @property
    def run_root(self) -> str:
        return self.root or ("runs/study-cpu" if self.scale else "runs/study")

    @property
    def experiment(self) -> str:
        """The Aim experiment of the study's runs."""
        return "trm-study-cpu" if self.scale else "trm-study"

    @property
    def tracking(self) -> bool:
        return self.track if self.track is not None else self.scale is None


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    name: str
    """The run's name: its canonical entry (run directory and Aim run name)."""
    entries: tuple[str, ...]
    """The selected entries this run stands for."""
    config: RunConfig
    launcher: str | None = None
    """Launcher template (see Settings.launcher)."""

    @property
    def argv(self) -> list[str]:
        """Arguments of train.py (preset first)."""
        return [PRESET, *tyro_flags(PRESETS[PRESET][1], self.config)]

    @property
    def command(self) -> str:
        return shlex.join(["train.py", *self.argv])

    @property
    def launch(self) -> list[str]:
        """What `run_all` starts: `python train.py ...` here, or through the launcher."""
        if self.launcher is None:
            return [sys.executable, str(TRAIN_PY), *self.argv]
        return launch_argv(self.launcher, ["python", "train.py", *self.argv])

    @property
    def shown(self) -> str:
        """The command line as printed by `--dry-run`."""
        return f"python {self.command}" if self.launcher is None else shlex.join(self.launch)

    @property
    def run_dir(self) -> epath.Path:
        """The run directory: a local path or a URL (gs://...) every host sees."""
        return as_path(self.config.run_dir)

    @property
    def log(self) -> Path:
        """train.log: in the run directory, or under runs/sweep-logs/ for a URL one."""
        if not is_url(self.config.run_dir):
            return Path(self.config.run_dir) / LOG
        return Path(LOG_ROOT, *self.config.run_dir.split("://", 1)[1].split("/"), LOG)

    @property
    def marker(self) -> epath.Path:
        return self.run_dir / MARKER

    def finished(self) -> bool:
        return self.marker.exists()

    def saved_step(self) -> int | None:
        """The newest checkpoint step of an unfinished run (it resumes there), else None."""
        directory = as_path(self.config.checkpoint_dir)
        steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit()] \
            if directory.is_dir() else []
        return max(steps, default=None)

    def stale(self) -> bool:
        """Finished with another command line than the current one, one that trains another
        run: where it was tracked (`--track`, `--repo`) and the devices (`--launcher`) do not
        count."""
        return self.stale_changes() is not None

    def stale_changes(self) -> list[str] | None:
        """None unless `stale`; else the settings that differ, '--flag finished -> now' (none
        named when the finished line no longer parses)."""
        text = self.marker.read_text().strip() if self.finished() else ""
        if not text or shlex.split(text) == ["train.py", *self.argv]:
            return None
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # tyro's report of a bad line
                done = parse_cli(shlex.split(text)[1:])
        except (SystemExit, ValueError, ConfigError):  # a line this version no longer parses
            return []
        done = dataclasses.replace(done, tracking=self.config.tracking, mesh=self.config.mesh)
        if done == self.config:
            return None
        before, now = _flat(to_json(done)), _flat(to_json(self.config))
        return [f"{flag_name(k)} {before.get(k)!r} -> {now.get(k)!r}"
                for k in sorted(before.keys() | now.keys()) if before.get(k) != now.get(k)]


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"section.field": value} of a nested config dict."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def run_config(e: Experiment | str, settings: Settings) -> RunConfig:
    """The final config of `e`'s run: scaled, with its run dir and Aim name/tags."""
    first = canonical(e)
    cfg = first.config()
    if settings.scale == "cpu":
        cfg = scale_cpu(cfg, data_root=f"{settings.run_root}/data", steps=settings.steps)
    tags = tuple(dict.fromkeys(("sweep", *(x.group.name for x in aliases(first)), first.name)))
    distributed = {"mesh.distributed": True} if settings.launcher is not None else {}
    return override(cfg, {
        "run_dir": f"{settings.run_root}/{first.name}", "tracking.track": settings.tracking,
        "tracking.repo": settings.repo, "tracking.experiment": settings.experiment,
        "tracking.run_name": first.name, "tracking.tags": tags, **distributed})


def plan(entries: Sequence[Experiment], settings: Settings) -> list[PlannedRun]:
    """One run per distinct config among `entries`, in catalog order."""
    names: dict[str, list[str]] = {}
    for e in entries:
        names.setdefault(canonical(e).name, []).append(e.name)
    return [PlannedRun(n, tuple(sel), run_config(n, settings), settings.launcher)
            for n, sel in names.items()]


@dataclasses.dataclass
class Outcome:
    run: PlannedRun
    status: str
    """done, skipped, stale, failed"""
    seconds: float = 0.0
    detail: str = ""


def _signal_name(number: int) -> str:
    """SIGKILL for 9, ...; 'signal N' for one Python does not name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _last_line(log: Path) -> str:
    try:
        text = log.read_bytes()[-4000:].decode(errors="replace").replace("\r", "\n")
    except OSError:
        return ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    for marker in ("error: ", "stopped: "):  # after a progress bar's unfinished line
        if marker in last:
            return last[last.index(marker):]
    return last


# Run before a training command, in its process (Linux): SIGTERM when the runner dies, even
# by SIGKILL, so that no training run goes on unwatched, holding its run directory; then exec
# the command. (A preexec_fn would make the runner's fork run JAX's fork warning.)
_STOP_WITH_PARENT = ("import ctypes, os, signal, sys; "
                     "ctypes.CDLL(None).prctl(1, signal.SIGTERM); "  # PR_SET_PDEATHSIG
                     "os.getppid() == int(sys.argv[1]) or sys.exit(143); "  # already gone
                     "os.execvp(sys.argv[2], sys.argv[2:])")


def _stopping_with_runner(argv: list[str]) -> list[str]:
    """`argv`, started so that it gets SIGTERM when this process dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return argv
    return [sys.executable, "-c", _STOP_WITH_PARENT, str(os.getpid()), *argv]


def _prepare(runs: Sequence[PlannedRun]) -> None:
    """Before runs start side by side: generate each synthetic data set once and create each
    Aim repository (two runs creating one at the same time make one of them fail)."""
    from aim import Repo

    from trm.preflight import prepare_data

    data_dirs, repos = set(), set()
    for r in runs:
        data, tracking = r.config.data, r.config.tracking
        if data.generate != "none" and data.data_dir not in data_dirs:
            data_dirs.add(data.data_dir)
            prepare_data(r.config)
        if tracking.track and tracking.repo not in repos and not is_url(tracking.repo):
            # a local repository; aim://host:port is a tracking server's
            repos.add(tracking.repo)
            if not repo_data_dir(tracking.repo).is_dir():
                Path(tracking.repo).mkdir(parents=True, exist_ok=True)
                Repo.from_path(tracking.repo, init=True)


def set_aside(run_dir: epath.Path) -> epath.Path:
    """Rename `run_dir` to the first free `<run_dir>.stale-<k>` (k = 1, 2, ...) and return
    that path: kept for inspection, out of the way of a fresh run of the same name."""
    k = 1
    while (aside := run_dir.parent / f"{run_dir.name}.stale-{k}").exists():
        k += 1
    run_dir.rename(aside)
    return aside


def run_all(runs: Sequence[PlannedRun], *, jobs: int = 1, force: bool = False,
            env: Mapping[str, str] | None = None, poll_s: float = 0.5,
            say: Callable[[str], object] = print) -> list[Outcome]:
    """Train every run not finished yet, `jobs` at a time; never stops at a failure."""
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    outcomes: list[Outcome] = []
    todo: list[PlannedRun] = []
    for r in runs:
        changes = r.stale_changes()  # None unless finished with another command line
        if r.finished() and not force:
            outcomes.append(Outcome(r, "skipped" if changes is None else "stale",
                                    detail=f"{r.marker} exists"))
            differing = f" ({', '.join(changes)})" if changes else ""
            say(f"[{r.name}] " + (f"finished, skipped ({r.marker})" if changes is None else
                                  f"finished with another command line{differing}, skipped "
                                  f"({r.marker}; --force reruns it)"))
        else:
            if changes is not None:  # its checkpoints are another run's
                aside = set_aside(r.run_dir)
                say(f"[{r.name}] finished with another command line: moved to {aside}; "
                    "trains from scratch")
            todo.append(r)
    if todo:
        _prepare(todo)
    child_env = {**os.environ, "TQDM_MININTERVAL": "10", **(env or {})}
    active: list[tuple[PlannedRun, subprocess.Popen, float]] = []
    try:
        while todo or active:
            while todo and len(active) < jobs:
                r = todo.pop(0)
                r.log.parent.mkdir(parents=True, exist_ok=True)
                with open(r.log, "a") as log:
                    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {r.command}\n")
                    log.flush()
                    proc = subprocess.Popen(_stopping_with_runner(r.launch), stdout=log,
                                            stderr=subprocess.STDOUT, env=child_env)
                say(f"[{r.name}] started (log {r.log})")
                active.append((r, proc, time.monotonic()))
            time.sleep(poll_s)
            for item in [a for a in active if a[1].poll() is not None]:
                active.remove(item)
                r, proc, t0 = item
                seconds = time.monotonic() - t0
                if proc.returncode == 0:
                    r.run_dir.mkdir(parents=True, exist_ok=True)
                    r.marker.write_text(r.command + "\n")
                    outcomes.append(Outcome(r, "done", seconds))
                    say(f"[{r.name}] done in {seconds:.0f} s")
                else:
                    detail = (f"killed by {_signal_name(-proc.returncode)}"
                              if proc.returncode < 0 else
                              f"exit {proc.returncode}: {_last_line(r.log)}")
                    outcomes.append(Outcome(r, "failed", seconds, detail))
                    say(f"[{r.name}] FAILED after {seconds:.0f} s ({detail}; "
                        f"log {r.log})")
    except KeyboardInterrupt:
        for r, proc, _ in active:
            proc.terminate()
        for r, proc, _ in active:
            proc.wait()
            outcomes.append(Outcome(r, "failed", 0.0, "interrupted"))
        raise
    return outcomes


def report(outcomes: Sequence[Outcome]) -> str:
    """One summary line, then one line per failed run."""
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    lines = ["summary: " + ", ".join(f"{n} {s}" for s, n in counts.items())]
    lines += [f"  failed {o.run.name}: {o.detail} (log {o.run.log})"
              for o in outcomes if o.status == "failed"]
    return "\n".join(lines)
