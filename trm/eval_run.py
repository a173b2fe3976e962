"""Evaluate a model on data set splits: official metrics, accuracy per supervision step, ARC
voting; `python evaluate.py` (README "Evaluation") and the training loop's evaluation.

Batches are sharded on the mesh's data axis like training batches; every row runs exactly
`halt_max_steps` supervision steps (`trm.evaluation.rollout`). Per split:
- `metrics`: per labelled puzzle (padding rows and unlabelled rows excluded, so the same for
  any batch size and device count): accuracy = token accuracy, exact_accuracy,
  q_halt_accuracy, steps, lm_loss, q_halt_loss (the official loss head sums q_halt_loss over
  padding rows too), and count;
- `per_step`: exact accuracy if every puzzle stopped after step k (k = 1..halt_max_steps), and
  the adaptive policy that stops at the first step where the model's training halting rule
  fires (q_halt > 0, or q_halt > q_continue for HRM, the transformer baseline and TRM with ACT
  continue): its exact accuracy and mean number of steps;
- `arc` (ARC data sets): pass@K after voting over augmented copies (`trm.arc_eval`), and the
  Kaggle submission.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from data.common import atomic_file, check_output_file
from data.storage import as_path, is_url, local_copy
from trm.arc_eval import ArcVoter, Submission, write_submission
from trm.config import flag_name, require
from trm.eval_source import (
    OFFICIAL_EVAL_BATCH,
    ModelSource,
    check_compatible,
    check_data,
    load_model,
    planned_batches,
)
from trm.evaluation import (
    Rollout,
    eval_metrics,
    host_array,
    per_step_accuracy,
    rollout,
)
from trm.loop import require_arc_data, to_global
from trm.models import ACTModel
from trm.preflight import initialize_distributed, split_cpu
from trm.render import plot_per_step
from trm.run_config import MeshConfig
from trm.tracking import Tracker, open_aim_run
from trm.train_step import make_mesh

ARC_KEYS = ("valid", "task_index", "test_index", "dihedral", "colour_perm")
RolloutFn = Callable[..., Rollout]


@dataclasses.dataclass
class SetResult:
    """Evaluation of one split."""

    metrics: dict[str, float]
    per_step: dict[str, Any]
    arc: dict[str, float] | None = None
    submission: Submission | None = None
    puzzles: int = 0
    """Rows evaluated (padding excluded; ARC: every augmented copy)."""
    seconds: float = 0.0
    halting_rule: str = "q_halt > 0"
    """The adaptive policy's rule (`ModelConfig.halting_rule`)."""
    batch_size: int | None = None
    """The global batch the set ran in (a batch above its rows is cut to them)."""

    def flat(self) -> dict[str, Any]:
        """metrics, per-step curves and pass@K in one mapping (training-loop form)."""
        return {**self.metrics, **self.per_step, **(self.arc or {})}

    def to_json(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "per_step": self.per_step, "arc": self.arc,
                "puzzles": self.puzzles, "batch_size": self.batch_size,
                "seconds": round(self.seconds, 3),
                "puzzles_per_s": self.puzzles / max(self.seconds, 1e-9)}


def _all_hosts(x: np.ndarray) -> np.ndarray:
    """Host-local rows of every process, in global row order."""
    if jax.process_count() == 1:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(np.asarray(x), tiled=True))


def evaluate_stream(model: ACTModel, batches: Iterable[Mapping[str, np.ndarray]], mesh: Mesh, *,
                    voter: ArcVoter | None = None, rollout_fn: RolloutFn = rollout,
                    progress: tqdm | None = None) -> SetResult:
    """Evaluate host batches ({"inputs", "labels", "puzzle_identifiers"} [+ "valid"], ARC
    fields for the voter). Batch n + 1 is dispatched before batch n is read back."""
    rows: dict[str, list[np.ndarray]] = {}
    exact, margins, puzzles = [], [], 0
    start = time.perf_counter()

    def collect(batch: Mapping[str, np.ndarray], result: Rollout) -> None:
        nonlocal puzzles
        labelled = host_array(result.labelled)
        valid = _all_hosts(batch["valid"]) if "valid" in batch else np.ones_like(labelled)
        keep = labelled & valid
        for k, v in result.rows.items():
            rows.setdefault(k, []).append(host_array(v)[keep])
        exact.append(host_array(result.exact)[:, keep])
        margins.append(host_array(result.halt_margin)[:, keep])
        puzzles += int(valid.sum())
        if voter is not None:
            voter.add_batch({k: _all_hosts(batch[k]) for k in ARC_KEYS},
                            host_array(result.preds), host_array(result.q_halt)[-1])
        if progress is not None:
            progress.update(1)

    pending = None
    for batch in batches:
        g = to_global(batch, mesh)
        result = rollout_fn(model, g["inputs"], g["labels"], g["puzzle_identifiers"])
        if pending is not None:
            collect(*pending)
        pending = (batch, result)
    if pending is not None:
        collect(*pending)
    steps = model.config.halt_max_steps
    exact = np.concatenate(exact, 1) if exact else np.zeros((steps, 0), bool)
    per_step = per_step_accuracy(
        exact, np.concatenate(margins, 1) if margins else np.zeros((steps, 0), np.float32))
    metrics = eval_metrics({k: np.concatenate(v) for k, v in rows.items()}, exact.shape[1])
    return SetResult(metrics=metrics, per_step=per_step,
                     arc=None if voter is None else voter.summary(),
                     submission=None if voter is None else voter.submission(),
                     puzzles=puzzles, seconds=time.perf_counter() - start,
                     halting_rule=model.config.halting_rule)


def evaluate_split(model: ACTModel, data_dir: str | Path, split: str, mesh: Mesh, *, batch_size: int,
                   arc: bool | None = None, progress: bool = False, leave: bool = True,
                   rollout_fn: RolloutFn = rollout) -> SetResult:
    """Evaluate `model` on one split of a built data set. `arc`: vote over augmented copies
    (None: on ARC data sets). `progress`: a bar (`leave`: kept when done). A `batch_size`
    above the split's rows is cut to the rows, rounded up to a multiple of the devices (the
    metrics do not depend on it)."""
    from data.pipeline import arc_pairs, eval_batches, eval_rows, load_metadata, task_ids

    meta = load_metadata(data_dir, split)
    check_compatible(model.config, meta)
    if batch_size < 1 or batch_size % mesh.devices.size:
        raise ValueError(f"batch size {batch_size} must be a positive multiple of the "
                         f"{mesh.devices.size} devices")
    if arc:
        require_arc_data(meta, data_dir)
    voter = (ArcVoter(arc_pairs(data_dir, split), task_ids(data_dir))
             if (meta.name == "arc" if arc is None else arc) else None)
    rows, devices = eval_rows(data_dir, split), mesh.devices.size
    batch_size = min(batch_size, max(1, -(-rows // devices)) * devices)
    with tqdm(total=-(-rows // batch_size), desc=f"eval {split}", unit="batch", dynamic_ncols=True,
              disable=not progress or jax.process_index() != 0, leave=leave) as bar:
        result = evaluate_stream(model, eval_batches(data_dir, global_batch_size=batch_size,
                                                     split=split),
                                 mesh, voter=voter, rollout_fn=rollout_fn, progress=bar)
    return dataclasses.replace(result, batch_size=batch_size)


# ---------------------------------------------------------------------------------------------
# python evaluate.py


@dataclasses.dataclass(frozen=True)
class EvalArgs(ModelSource):
    """Evaluate a checkpoint or official weights on data set splits. One puzzle's prediction
    after every supervision step: `python evaluate.py solve --help`."""

    data_dir: str | None = None
    """Built data set directory (default: the checkpoint's training data)."""
    split: tuple[str, ...] = ("test",)
    """Splits to evaluate."""
    batch_size: int | None = None
    """Global evaluation batch (default: the run's eval batch, else 768)."""
    out: str = "eval_results.json"
    """Results JSON."""
    plot: str | None = None
    """Per-step accuracy PNG (default: <out without .json>_per_step.png)."""
    arc_submission: str | None = None
    """Kaggle submission for ARC data (default: <out without .json>_submission.json); with
    several ARC splits, one file per split: <name>_<split>.json."""
    aim_run: str | None = None
    """Hash of an Aim run (e.g. the training run) to add these results to."""
    track: bool = False
    """Log the results to a new Aim run (experiment "evaluate")."""
    aim_repo: str | None = None
    """Aim repository or aim://host:port server (default: the training run's, else .aim)."""
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    """Devices and hosts, as in training: --mesh.data N devices; multi-host
    --mesh.distributed (every host runs the same command and reads its shard of each batch;
    process 0 prints, writes the outputs and tracks)."""
    devices: int | None = None
    """Same as --mesh.data N (the flag's earlier name, kept for existing scripts)."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.batch_size is None or self.batch_size >= 1, self, "batch_size",
                f"must be >= 1, got {self.batch_size}")
        if self.devices is not None:
            require(self.devices >= 1, self, "devices", f"must be >= 1, got {self.devices}")
            require(self.mesh.data in (-1, self.devices), self, "devices",
                    f"{self.devices} contradicts --mesh.data {self.mesh.data}")
            object.__setattr__(self, "mesh", dataclasses.replace(self.mesh, data=self.devices))
        for field in ("out", "plot", "arc_submission"):
            path = getattr(self, field)
            require(path is None or os.path.basename(path) not in ("", ".", ".."), self, field,
                    f"{path!r} is a directory; give a file path")
        named = [f for f in ("out", "plot", "arc_submission") if getattr(self, f) is not None]
        for i, field in enumerate(named):
            for other in named[i + 1:]:
                require(not _same_file(getattr(self, field), getattr(self, other)), self, field,
                        f"and {flag_name(other)} both name {getattr(self, field)}: give each "
                        "output its own file")

    def output_path(self, suffix: str) -> str:
        """<out without .json><suffix>, next to out (a local path or a URL)."""
        out = as_path(self.out)
        return str(out.with_name(out.stem + suffix))

    def submission_path(self, split: str, several: bool) -> str:
        """Where the ARC submission of `split` goes: --arc-submission (default
        <out>_submission.json), with _<split> before its suffix when `several` ARC splits are
        evaluated."""
        if not self.arc_submission:
            return self.output_path(f"_{split}_submission.json" if several else "_submission.json")
        if not several:
            return self.arc_submission
        path = as_path(self.arc_submission)
        return str(path.with_name(f"{path.stem}_{split}{path.suffix}"))

    def output_files(self) -> list[str]:
        """Every file this evaluation may write (`_write_outputs`)."""
        return [self.out, self.plot or self.output_path("_per_step.png"),
                self.submission_path(self.split[0], several=False),
                *(self.submission_path(split, several=True) for split in self.split)]


def _same_file(a: str, b: str) -> bool:
    """Whether two output paths (local or URLs) name one file."""
    if is_url(a) or is_url(b):
        return a.rstrip("/") == b.rstrip("/")
    return os.path.abspath(a) == os.path.abspath(b)


def _open_tracker(args: EvalArgs, default_repo: str) -> Tracker:
    if not (args.aim_run or args.track) or jax.process_index() != 0:
        return Tracker(None)
    import aim  # only when tracking

    repo = args.aim_repo or default_repo
    if args.aim_run:
        try:
            return Tracker(open_aim_run(repo, run_hash=args.aim_run))
        except aim.sdk.errors.MissingRunError:
            raise ValueError(f"no Aim run {args.aim_run} in {repo}") from None
    run = open_aim_run(repo, experiment="evaluate")
    run["hparams"] = {"evaluate": json.loads(json.dumps(dataclasses.asdict(args)))}
    return Tracker(run)


def track_results(tracker: Tracker, results: Mapping[str, SetResult], step: int,
                  weights: str) -> None:
    """Scalars at the checkpoint's step (context subset=eval, set, source=evaluate, weights);
    the per-step curve as `exact_accuracy_at_step` against the supervision step."""
    for split, r in results.items():
        context = {"subset": "eval", "set": split, "source": "evaluate", "weights": weights}
        tracker.track({k: v for k, v in r.flat().items() if np.ndim(v) == 0}, step, context)
        for k, acc in enumerate(r.per_step.get("exact_accuracy_at_step", []), start=1):
            tracker.track({"exact_accuracy_at_step": acc}, k,
                          {**context, "checkpoint_step": str(step)})


def source_name(source: Mapping[str, Any]) -> str:
    """The evaluated weights in words: '<checkpoint dir> step 7 (ema weights)' or
    '<file> (official weights)'."""
    step = f" step {source['step']}" if source.get("step") is not None else ""
    return (f"{source.get('checkpoint_dir') or source.get('official_weights')}{step} "
            f"({source['weights']} weights)")


def summary_lines(results: Mapping[str, SetResult]) -> list[str]:
    lines = []
    for split, r in results.items():
        m, s = r.metrics, r.per_step
        if not m["count"]:
            lines.append(f"{split}: no known outputs to score ({r.puzzles} predictions, "
                         f"{r.puzzles / max(r.seconds, 1e-9):.1f} puzzles/s)"
                         + ("; the submission holds the voted answers" if r.arc else ""))
            continue
        lines.append(f"{split}: exact {m.get('exact_accuracy', 0):.4f}  token "
                     f"{m.get('accuracy', 0):.4f}  q_halt {m.get('q_halt_accuracy', 0):.4f}  "
                     f"steps {m.get('steps', 0):.2f}  (n={int(m['count'])}, "
                     f"{r.puzzles / max(r.seconds, 1e-9):.1f} puzzles/s)")
        curve = " ".join(f"{k}:{a:.3f}" for k, a in enumerate(s["exact_accuracy_at_step"], 1))
        lines.append(f"  exact accuracy if stopped after step k: {curve}")
        lines.append(f"  adaptive halting ({r.halting_rule}): exact "
                     f"{s['adaptive_exact_accuracy']:.4f} "
                     f"at {s['adaptive_mean_steps']:.2f} steps")
        if r.arc is not None:
            unscored = int(r.arc.get("tasks_unscored", 0))
            lines.append("  ARC " + "  ".join(f"{k} {v:.4f}" for k, v in r.arc.items()
                                             if k.startswith("pass@"))
                         + (f"  (over {int(r.arc['tasks']) - unscored} of {int(r.arc['tasks'])}"
                            f" tasks: {unscored} have unknown test outputs)" if unscored else ""))
    return lines


def run_evaluate(args: EvalArgs) -> dict[str, Any]:
    """Load, evaluate every split, print, write JSON / PNG / submission, track; the JSON."""
    from data.pipeline import load_metadata

    for path in args.output_files():  # before any work: nothing half-written
        check_output_file(path)
    if args.plot is not None and not args.plot.lower().endswith(".png"):
        raise ValueError(f"--plot {args.plot}: the plot is a PNG image; give a path ending "
                         "in .png")
    batches = planned_batches(args, args.batch_size)
    if batches or args.mesh.data > 0:
        split_cpu(args.mesh, *batches)
    initialize_distributed(args.mesh, args)
    mesh = make_mesh(None if args.mesh.data == -1 else args.mesh.data, flag="--mesh.data")
    meta = (load_metadata(local_copy(args.data_dir), args.split[0])
            if args.official_weights and args.data_dir else None)
    loaded = load_model(args, data_metadata=meta, sharding=NamedSharding(mesh, P()))
    run = loaded.run_config
    data_dir = args.data_dir or (run.data.data_dir if run else None)
    if data_dir is None:
        raise ValueError("give --data-dir")
    if not args.data_dir and not is_url(data_dir) and not (
            Path(data_dir) / "metadata.json").is_file():
        raise FileNotFoundError(f"the training run's data set, {data_dir} (as its checkpoint "
                                "records it), is not here; give --data-dir")
    local = local_copy(data_dir)  # a URL is read from a local copy
    check_data(args, loaded, local)
    batch_size = args.batch_size or (run.eval_batch_size if run else OFFICIAL_EVAL_BATCH)
    tracker = _open_tracker(args, run.tracking.repo if run else ".aim")
    try:
        start = time.perf_counter()
        results = {split: evaluate_split(loaded.model, local, split, mesh,
                                         batch_size=batch_size, progress=args.progress)
                   for split in args.split}
        doc = {"source": loaded.info, "data_dir": str(data_dir), "batch_size": batch_size,
               "devices": int(mesh.devices.size), "seconds": round(time.perf_counter() - start, 3),
               "sets": {split: r.to_json() for split, r in results.items()},
               "aim_run": tracker.run_hash}
        if jax.process_index() == 0:
            print("\n".join([f"evaluated {source_name(loaded.info)}", *summary_lines(results)]))
            _write_outputs(args, doc, results)
        track_results(tracker, results, int(loaded.info.get("step") or 0), loaded.info["weights"])
    finally:
        tracker.close()
    return doc


def _write_outputs(args: EvalArgs, doc: dict[str, Any], results: Mapping[str, SetResult]) -> None:
    plot = args.plot or args.output_path("_per_step.png")
    plot_per_step(plot, {s: r.per_step for s, r in results.items()}, source_name(doc["source"]))
    doc["plot"] = str(plot)
    arc = {s: r.submission for s, r in results.items() if r.submission is not None}
    for split, submission in arc.items():
        path = args.submission_path(split, several=len(arc) > 1)
        write_submission(path, submission)
        doc["sets"][split]["submission"] = str(path)
    with atomic_file(args.out) as tmp:
        tmp.write_text(json.dumps(doc, indent=1, default=_json_default) + "\n")
    print(f"wrote {args.out}, {plot}" + "".join(
        f", {doc['sets'][s]['submission']}" for s in arc))


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
