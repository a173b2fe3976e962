"""`python evaluate.py solve`: one puzzle through a model, showing the prediction after every
supervision step — text in the terminal, a PNG strip (`trm.render`) and the q_halt
confidence per step.

Puzzles: a Sudoku as 81 characters (digits, '.' or '0' for blanks; optionally its solution),
a maze file (N lines of N characters from "# SGo"; cells marked 'o' are the path, which is then
the target and is removed from the input), or an ARC test input (task id and test index) of a
built ARC data set, unaugmented.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from jaxtyping import Bool, Float, Int

from data import validate
from data.augment import encode_grid
from data.common import IGNORE_LABEL_ID, MAZE_CHARSET, DataError, check_output_file
from trm.eval_source import LoadedModel, ModelSource, check_data, load_model
from trm.evaluation import rollout
from trm.models import ACTModel
from trm.render import Kind, cells, changed_cells, draw_strip, strip_panels


@dataclasses.dataclass(frozen=True)
class Puzzle:
    kind: Kind
    name: str
    inputs: Int[np.ndarray, " s"]
    labels: Int[np.ndarray, " s"]
    """Target tokens; IGNORE_LABEL_ID where unknown."""
    puzzle_identifier: int = 0

    @property
    def labelled(self) -> bool:
        return bool((self.labels != IGNORE_LABEL_ID).any())


def _labels(tokens: np.ndarray) -> np.ndarray:
    return np.where(tokens == 0, IGNORE_LABEL_ID, tokens).astype(np.int32)


def sudoku_puzzle(text: str, solution: str | None = None) -> Puzzle:
    """Tokens as the data set's: blank 1, digit d -> d + 1. Checked as `python -m data build`
    checks a CSV row (`data.validate.sudoku`; whitespace is ignored); ValueError if bad."""
    try:
        q, a = validate.sudoku(["".join(text.split())],
                               None if solution is None else ["".join(solution.split())],
                               names=("puzzle", "solution"))
    except validate.BadRow as e:
        raise ValueError(f"Sudoku {e.problem}") from None
    labels = np.full(81, IGNORE_LABEL_ID, np.int32) if a is None else a[0].astype(np.int32) + 1
    return Puzzle("sudoku", "sudoku", q[0].astype(np.int32) + 1, labels)


def maze_puzzle(path: str | Path) -> Puzzle:
    """Maze chars "# SGo" -> tokens 1..5; path cells ('o') become the target. Checked as
    `python -m data build` checks a CSV row (`data.validate.maze`); ValueError if bad."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{p} is a directory; give a maze file")
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such maze file")
    try:
        rows = p.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{p}: not a text file; a maze is N lines of N characters from "
                         f"{MAZE_CHARSET!r}") from None
    while rows and not rows[-1]:
        rows.pop()
    n = len(rows)
    shape = f"a maze is N lines of N characters from {MAZE_CHARSET!r}"
    if not n:
        raise ValueError(f"{p}: empty; {shape}")
    for i, row in enumerate(rows, start=1):
        if len(row) != n:
            raise ValueError(f"{p}: line {i} has {len(row)} characters, the file {n} lines; "
                             f"{shape}")
    grid = "".join(rows)
    try:
        validate.to_bytes("maze", [grid], n * n, MAZE_CHARSET)  # 'o' allowed here
        q, a = validate.maze([grid.replace("o", " ")], [grid] if "o" in grid else None,
                             names=("maze", "path"))
    except validate.BadRow as e:
        raise ValueError(f"{p}: {e.problem}") from None
    labels = np.full(n * n, IGNORE_LABEL_ID, np.int32) if a is None else a[0].astype(np.int32)
    return Puzzle("maze", p.name, q[0].astype(np.int32), labels)


def arc_puzzle(data_dir: str | Path, task_id: str, test_index: int) -> Puzzle:
    """Test input `test_index` of ARC task `task_id`, original frame, its copy-0 identifier."""
    from data.arc import identifier_starts
    from data.pipeline import arc_pairs, load_metadata, task_ids
    from data.store import read_arc

    kind = load_metadata(Path(data_dir), "test").name
    if kind != "arc":
        raise ValueError(f"{data_dir} is a {kind} data set: --arc-task needs an ARC one "
                         "(give --data-dir)")
    pairs = arc_pairs(data_dir, "test")
    if task_id not in pairs:
        training = task_id in arc_pairs(data_dir, "train")
        raise ValueError(f"{data_dir}: {task_id!r} is "
                         + ("a training task; --arc-task takes a test task" if training else
                            "not one of its tasks")
                         + f" (its test tasks: e.g. {', '.join(list(pairs)[:5])})")
    if not 0 <= test_index < len(pairs[task_id]):
        raise ValueError(f"task {task_id} has {len(pairs[task_id])} test input(s), "
                         f"not index {test_index}")
    grid_in, grid_out = pairs[task_id][test_index]
    starts = identifier_starts(read_arc(Path(data_dir))[0].pool_count)
    identifier = int(starts[task_ids(data_dir).index(task_id)])
    return Puzzle("arc", f"{task_id}[{test_index}]", encode_grid(grid_in),
                  _labels(encode_grid(grid_out)), identifier)


@dataclasses.dataclass
class Trace:
    puzzle: Puzzle
    step_preds: Int[np.ndarray, "t s"]
    q_halt: Float[np.ndarray, " t"]
    halt_margin: Float[np.ndarray, " t"]
    """`Rollout.halt_margin`: the model's halting rule fires where > 0."""
    halting_rule: str
    exact: Bool[np.ndarray, " t"] | None
    """Exactly right after each step (None when the target is unknown)."""


def solve(model: ACTModel, puzzle: Puzzle) -> Trace:
    """Run the eval rollout (all halt_max_steps steps) on one puzzle; ValueError if the model
    cannot read its tokens or identifier."""
    c = model.config
    if puzzle.inputs.size != c.seq_len or puzzle.inputs.max() >= c.vocab_size:
        raise ValueError(f"this {puzzle.kind} puzzle does not fit the model: it is "
                         f"{puzzle.inputs.size} tokens with ids up to {puzzle.inputs.max()}, the "
                         f"model reads {c.seq_len} tokens with ids below {c.vocab_size} (a "
                         "checkpoint trained on this kind and size of puzzle is needed)")
    if puzzle.puzzle_identifier >= c.num_puzzle_identifiers:
        raise ValueError(f"puzzle identifier {puzzle.puzzle_identifier} is outside the model's "
                         f"{c.num_puzzle_identifiers}")
    r = rollout(model, jnp.asarray(puzzle.inputs[None]), jnp.asarray(puzzle.labels[None]),
                jnp.array([puzzle.puzzle_identifier], jnp.int32), keep_step_preds=True)
    return Trace(puzzle, np.asarray(r.step_preds[:, 0]), np.asarray(r.q_halt[:, 0]),
                 np.asarray(r.halt_margin[:, 0]), c.halting_rule,
                 np.asarray(r.exact[:, 0]) if puzzle.labelled else None)


def grid_text(kind: Kind, grid: np.ndarray) -> str:
    if grid.size == 0:
        return "(empty grid)"
    if kind == "sudoku":
        return "\n".join(" ".join("." if v == 0 else str(v) if v > 0 else "?" for v in row)
                         for row in grid)
    if kind == "maze":
        return "\n".join("".join(MAZE_CHARSET[v] if v >= 0 else "?" for v in row) for row in grid)
    return "\n".join("".join(str(v) for v in row) for row in grid)


def describe(trace: Trace) -> str:
    """Terminal view: one line per step (q_halt, q_continue where the halting rule reads it,
    P(halt) = sigmoid of the rule's margin, cells changed, correct), the grid after every step
    that changed it, and where adaptive halting would stop."""
    p = trace.puzzle
    title = p.kind if p.name == p.kind else f"{p.kind} {p.name}"
    lines = [f"{title}: {len(trace.q_halt)} supervision steps", "input:",
             grid_text(p.kind, cells(p.kind, p.inputs))]
    before = cells(p.kind, p.inputs)
    reads_continue = "q_continue" in trace.halting_rule
    for k, (pred, q, m) in enumerate(zip(trace.step_preds, trace.q_halt, trace.halt_margin),
                                     start=1):
        grid = cells(p.kind, pred)
        shape_changed = grid.shape != before.shape
        n = "new shape" if shape_changed else f"{int(changed_cells(grid, before).sum())} changed"
        verdict = "" if trace.exact is None else ("  correct" if trace.exact[k - 1] else "  wrong")
        q_continue = f"  q_continue {q - m:+7.3f}" if reads_continue else ""
        lines.append(f"step {k:2d}  q_halt {q:+7.3f}{q_continue}  P(halt) "
                     f"{1 / (1 + math.exp(-m)):.3f}  {n}{verdict}")
        if k == 1 or shape_changed or (grid != before).any():
            lines.append(grid_text(p.kind, grid))
        before = grid
    halts = np.flatnonzero(trace.halt_margin > 0)
    lines.append(f"adaptive halting (first {trace.halting_rule}) stops at step "
                 f"{halts[0] + 1 if halts.size else len(trace.q_halt)}"
                 + ("" if halts.size else " (never confident; the last step)"))
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class SolveArgs(ModelSource):
    """Show a model's prediction after each supervision step on one puzzle."""

    sudoku: str | None = None
    """The Sudoku: 81 characters, '.' or '0' for blanks."""
    solution: str | None = None
    """Its solution (81 digits), to mark wrong cells and exactness."""
    maze: str | None = None
    """Maze file: N lines of N characters from '# SGo' ('o' = path, used as the target)."""
    arc_task: str | None = None
    """ARC task id of the data set's test split."""
    test_index: int = 0
    """Which test input of the ARC task."""
    data_dir: str | None = None
    """Built data set (ARC puzzles; default: the checkpoint's training data)."""
    out: str = "solve.png"
    """PNG strip: input, prediction after each step, target."""


def check_flags(args: SolveArgs) -> None:
    """Refuse a flag that does nothing for the puzzle given (ValueError, one line)."""
    if args.solution is not None and args.sudoku is None:
        raise ValueError("--solution goes with --sudoku")
    if args.test_index != 0 and args.arc_task is None:
        raise ValueError("--test-index goes with --arc-task")
    if args.data_dir is not None and args.arc_task is None and not args.official_weights:
        raise ValueError("--data-dir goes with --arc-task or --official-weights (a Sudoku or "
                         "maze is read from the command line)")


def check_kind(loaded: LoadedModel, kind: Kind, allow_mismatch: bool) -> None:
    """Refuse (DataError) a puzzle of another kind than the checkpoint's training data (its
    fingerprint), unless `allow_mismatch`: a model that reads the tokens can still not
    solve a puzzle kind it never saw."""
    trained = (loaded.data_fingerprint or {}).get("kind")
    if trained is not None and trained != kind and not allow_mismatch:
        raise DataError(f"this checkpoint was trained on {trained} puzzles, not {kind} "
                        "(--allow-data-mismatch to run it anyway)")


def run_solve(args: SolveArgs) -> Trace:
    if sum(x is not None for x in (args.sudoku, args.maze, args.arc_task)) != 1:
        raise ValueError("give exactly one puzzle: --sudoku, --maze or --arc-task")
    check_flags(args)
    check_output_file(args.out)  # the output and the puzzle are checked before the model load
    if not args.out.lower().endswith(".png"):
        raise ValueError(f"--out {args.out}: the strip is a PNG image; give a path ending in .png")
    puzzle = (sudoku_puzzle(args.sudoku, args.solution) if args.sudoku is not None else
              maze_puzzle(args.maze) if args.maze is not None else None)
    meta = None
    if args.official_weights and args.data_dir:
        from data.pipeline import load_metadata
        meta = load_metadata(args.data_dir, "test")
    loaded = load_model(args, data_metadata=meta)
    if puzzle is None:
        run = loaded.run_config
        data_dir = args.data_dir or (run.data.data_dir if run else None)
        if data_dir is None:
            raise ValueError("ARC puzzles need --data-dir")
        check_data(args, loaded, data_dir)
        puzzle = arc_puzzle(data_dir, args.arc_task, args.test_index)
    check_kind(loaded, puzzle.kind, args.allow_data_mismatch)
    trace = solve(loaded.model, puzzle)
    print(describe(trace))
    panels = strip_panels(puzzle.kind, puzzle.inputs, trace.step_preds, trace.halt_margin,
                          puzzle.labels)
    clues = cells("sudoku", puzzle.inputs) if puzzle.kind == "sudoku" else None
    width, height = draw_strip(args.out, puzzle.kind, panels, clues)
    print(f"wrote {args.out} ({width}x{height} px, {len(panels)} panels)")
    return trace
