"""ARC evaluation as the official evaluator does it: voting across augmented copies, pass@K
and a Kaggle-format submission.

Each prediction of an augmented copy of a test input is mapped back to the original frame
(`data.augment.arc_inverse`: crop at EOS, inverse dihedral transform, inverse colour map).
Predictions are pooled per (task, input grid) — the official key; two test inputs of a task
with identical grids share one pool. Identical grids in a pool form one candidate with
`votes` (copies that predicted it) and `confidence` (mean over those copies of
sigmoid(q_halt), float64). Candidates rank by votes, then confidence; exact ties keep the
order in which the candidates first appeared (the official sort is stable).

A test input is solved at K when one of its top-K candidates equals its solution; a task
scores the fraction of its test inputs solved, and pass@K is the mean over the split's tasks.
A test input without any prediction counts as unsolved. A task with an unknown test output
(a test subset built without solutions) is left out of pass@K, which is absent when no task
is scored; its predictions still go into the submission.

Submission: `{task id: [{"attempt_1": grid, "attempt_2": grid}, ... one per test input]}`,
grids as lists of lists of ints 0..9. The top candidates fill the attempts, the first one
repeated when there are fewer. Where the official code skips a test input that has no
prediction (leaving the list shorter than the task's test inputs), we write `[[0]]` attempts so
the file always matches the Kaggle schema; an empty (0 x 0) crop is written as `[[0]]` too.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from jaxtyping import Float, Int, Integer

from data.augment import arc_inverse
from data.common import atomic_file

PASS_KS = (1, 2, 5, 10, 100, 1000)
ATTEMPTS = 2
GridKey = tuple[tuple[int, ...], bytes]
Submission = dict[str, list[dict[str, list[list[int]]]]]


def grid_key(grid: Integer[np.ndarray, "h w"]) -> GridKey:
    """Identity of a grid: its shape and its colours (what the official `grid_hash` hashes)."""
    g = np.asarray(grid)
    return tuple(g.shape), g.astype(np.uint8).tobytes()


@dataclasses.dataclass
class Candidate:
    """One distinct predicted grid of a test input."""

    grid: np.ndarray
    votes: int = 0
    confidence_sum: float = 0.0

    @property
    def confidence(self) -> float:
        """Mean sigmoid(q_halt) of the copies that voted for it."""
        return self.confidence_sum / max(self.votes, 1)


def sigmoid64(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-np.float64(x))))


class ArcVoter:
    """Collects predictions of augmented test inputs and votes on them.

    `pairs`: task id -> [(input grid, solution grid), ...] in test-index order
    (`data.pipeline.arc_pairs`); `task_names[i]` names the task of an eval batch's
    `task_index` i (`data.pipeline.task_ids`; default: the keys of `pairs`).
    """

    def __init__(self, pairs: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]],
                 task_names: Sequence[str] | None = None) -> None:
        self.pairs = {t: [(np.asarray(i), np.asarray(o)) for i, o in p] for t, p in pairs.items()}
        self.task_names = list(pairs) if task_names is None else list(task_names)
        self._pools: dict[tuple[str, GridKey], dict[GridKey, Candidate]] = {}

    def _pool_key(self, task: str, test_index: int) -> tuple[str, GridKey]:
        if task not in self.pairs or not 0 <= test_index < len(self.pairs[task]):
            raise ValueError(f"ARC prediction for unknown test input {task!r}[{test_index}]")
        return task, grid_key(self.pairs[task][test_index][0])

    def add(self, task: str, test_index: int, grid: Integer[np.ndarray, "h w"],
            q_halt_logit: float) -> None:
        """One prediction (original frame) of test input `test_index` of `task`."""
        pool = self._pools.setdefault(self._pool_key(task, test_index), {})
        candidate = pool.setdefault(grid_key(grid), Candidate(np.asarray(grid, np.int64)))
        candidate.votes += 1
        candidate.confidence_sum += sigmoid64(q_halt_logit)

    def add_batch(self, batch: Mapping[str, np.ndarray], preds: Int[np.ndarray, "b s"],
                  q_halt_logits: Float[np.ndarray, " b"]) -> None:
        """Predicted canvases of an evaluation batch (padding rows, `valid` False, skipped);
        uses its task_index, test_index, dihedral and colour_perm."""
        for r in np.flatnonzero(batch["valid"]):
            grid = arc_inverse(preds[r], batch["dihedral"][r], batch["colour_perm"][r])
            self.add(self.task_names[int(batch["task_index"][r])], int(batch["test_index"][r]),
                     grid, float(q_halt_logits[r]))

    def ranked(self, task: str, test_index: int) -> list[Candidate]:
        """Candidates of one test input, best first."""
        pool = self._pools.get(self._pool_key(task, test_index), {})
        return sorted(pool.values(), key=lambda c: (c.votes, c.confidence), reverse=True)

    def solved_rank(self, task: str, test_index: int) -> int | None:
        """0-based rank of the correct candidate, None when no candidate is correct."""
        solution = grid_key(self.pairs[task][test_index][1])
        for rank, c in enumerate(self.ranked(task, test_index)):
            if grid_key(c.grid) == solution:
                return rank
        return None

    def scored_tasks(self) -> list[str]:
        """Tasks whose every test output is known (an unknown one is a 0 x 0 grid)."""
        return [t for t, pairs in self.pairs.items() if all(o.size for _, o in pairs)]

    def pass_at_k(self, ks: Sequence[int] = PASS_KS) -> dict[str, float]:
        """{"pass@K": mean over the scored tasks of the fraction of test inputs solved within
        top K}; {} when no task has known outputs."""
        totals = np.zeros(len(ks))
        scored = self.scored_tasks()
        for task in scored:
            ranks = [self.solved_rank(task, i) for i in range(len(self.pairs[task]))]
            solved = [sum(r is not None and r < k for r in ranks) for k in ks]
            totals += np.asarray(solved, np.float64) / len(ranks)
        return {f"pass@{k}": float(t / len(scored)) for k, t in zip(ks, totals)} if scored else {}

    def summary(self, ks: Sequence[int] = PASS_KS) -> dict[str, float]:
        """pass@K plus counts: tasks, test inputs, test inputs without predictions, tasks
        left out of pass@K (an unknown test output)."""
        inputs = [(t, i) for t, p in self.pairs.items() for i in range(len(p))]
        missing = sum(not self.ranked(t, i) for t, i in inputs)
        return {**self.pass_at_k(ks), "tasks": float(len(self.pairs)),
                "test_inputs": float(len(inputs)),
                "test_inputs_without_predictions": float(missing),
                "tasks_unscored": float(len(self.pairs) - len(self.scored_tasks()))}

    def submission(self, attempts: int = ATTEMPTS) -> Submission:
        """Kaggle format: per task, one {"attempt_1": grid, ...} per test input, in order."""
        out: Submission = {}
        for task, pairs in self.pairs.items():
            entries = []
            for i in range(len(pairs)):
                grids = [_as_list(c.grid) for c in self.ranked(task, i)[:attempts]] or [[[0]]]
                grids += [grids[0]] * (attempts - len(grids))
                entries.append({f"attempt_{j + 1}": g for j, g in enumerate(grids)})
            out[task] = entries
        return out


def _as_list(grid: np.ndarray) -> list[list[int]]:
    return grid.astype(int).tolist() if grid.size else [[0]]


def validate_submission(submission: Any, test_counts: Mapping[str, int],
                        attempts: int = ATTEMPTS) -> None:
    """Raise ValueError unless `submission` follows the Kaggle ARC schema for tasks with
    `test_counts[task]` test inputs each."""
    if not isinstance(submission, dict) or set(submission) != set(test_counts):
        raise ValueError("submission must map exactly the evaluated task ids")
    names = {f"attempt_{j + 1}" for j in range(attempts)}
    for task, entries in submission.items():
        if not isinstance(entries, list) or len(entries) != test_counts[task]:
            raise ValueError(f"task {task}: expected {test_counts[task]} test entries")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or set(entry) != names:
                raise ValueError(f"task {task}[{i}]: keys must be {sorted(names)}")
            for name, grid in entry.items():
                if not _is_grid(grid):
                    raise ValueError(f"task {task}[{i}].{name}: not a rectangular grid of "
                                     f"ints 0..9 (at most 30 x 30)")


def _is_grid(grid: Any) -> bool:
    if not isinstance(grid, list) or not 1 <= len(grid) <= 30:
        return False
    rows = [r for r in grid if isinstance(r, list)]
    if len(rows) != len(grid) or not 1 <= len(rows[0]) <= 30:
        return False
    return all(len(r) == len(rows[0]) and all(type(v) is int and 0 <= v <= 9 for v in r)
               for r in rows)


def write_submission(path: str | os.PathLike[str], submission: Submission) -> None:
    """Write the submission JSON atomically (a temporary file renamed into place)."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(submission))
