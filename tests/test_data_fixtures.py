"""Synthetic raw files for the data tests (no real data set is read): Sudoku / maze CSVs and
ARC-format JSON tasks, plus the small data sets built from them. Imported by test_data_*.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from data import build
from data.generate import write_maze_csv

HEADER = "source,question,answer,rating\n"


def solved_sudoku(seed: int) -> np.ndarray:
    """A valid 9x9 solution: the pattern (3r + r//3 + c) % 9 + 1, rows/cols shuffled within
    bands/stacks and digits relabelled by a seeded numpy generator."""
    rng = np.random.default_rng(seed)
    r, c = np.meshgrid(np.arange(9), np.arange(9), indexing="ij")
    grid = (3 * r + r // 3 + c) % 9 + 1
    rows = np.concatenate([b * 3 + rng.permutation(3) for b in rng.permutation(3)])
    cols = np.concatenate([b * 3 + rng.permutation(3) for b in rng.permutation(3)])
    relabel = np.concatenate([[0], rng.permutation(9) + 1])
    return relabel[grid[rows][:, cols]]


def sudoku_rows(n: int, seed: int, blank: str = ".") -> list[tuple[str, str, int]]:
    """n (question, answer, rating) rows with ~half the cells blank."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n):
        sol = solved_sudoku(seed * 1000 + k).ravel()
        mask = rng.random(81) < 0.5
        q = "".join(blank if m else str(v) for m, v in zip(mask, sol))
        rows.append((q, "".join(map(str, sol)), k % 5))
    return rows


def write_csv(path: Path, rows: list[tuple[str, str, int]] | list[tuple[str, ...]]) -> Path:
    path.write_text(HEADER + "".join(f"test,{','.join(map(str, r))}\n" for r in rows))
    return path


MAZE_Q = ["#S###", "# # #", "#   #", "### #", "#G  #"]     # 5x5, unique shortest path
MAZE_A = ["#S###", "#o# #", "#ooo#", "###o#", "#Goo#"]


def maze_rows(n: int) -> list[tuple[str, str, int]]:
    """n copies of a hand-made 5x5 maze whose shortest path has 8 moves."""
    return [("".join(MAZE_Q), "".join(MAZE_A), 8)] * n


def arc_task(rng: np.random.Generator, n_train: int, n_test: int, colours: int = 10,
             max_side: int = 8) -> dict:
    """A random task: grids of random shapes with colours < `colours`."""
    def grid() -> list[list[int]]:
        h, w = rng.integers(1, max_side + 1, 2)
        return rng.integers(0, colours, (h, w)).tolist()
    return {"train": [{"input": grid(), "output": grid()} for _ in range(n_train)],
            "test": [{"input": grid(), "output": grid()} for _ in range(n_test)]}


def write_arc(root: Path, subsets: dict[str, dict[str, dict]]) -> Path:
    """Write arc-agi_<subset>_{challenges,solutions}.json from {subset: {task id: task}}."""
    root.mkdir(parents=True, exist_ok=True)
    for subset, tasks in subsets.items():
        challenges = {tid: {"train": t["train"], "test": [{"input": e["input"]} for e in t["test"]]}
                      for tid, t in tasks.items()}
        solutions = {tid: [e["output"] for e in t["test"]] for tid, t in tasks.items()}
        (root / f"arc-agi_{subset}_challenges.json").write_text(json.dumps(challenges))
        (root / f"arc-agi_{subset}_solutions.json").write_text(json.dumps(solutions))
    return root


def small_arc(root: Path, seed: int = 0) -> Path:
    """Two subsets: 'training' (3 tasks) and 'evaluation' (2 tasks, one with 2 test pairs),
    plus a two-colour task and a fully symmetric single-cell task."""
    rng = np.random.default_rng(seed)
    training = {f"tr{i}": arc_task(rng, 2 + i % 2, 1) for i in range(3)}
    training["two_colour"] = {"train": [{"input": [[0, 3], [3, 3]], "output": [[3, 0]]}],
                              "test": [{"input": [[3]], "output": [[0, 3, 3]]}]}
    training["blank"] = {"train": [{"input": [[0]], "output": [[0]]}],
                         "test": [{"input": [[0]], "output": [[0]]}]}
    evaluation = {"ev0": arc_task(rng, 3, 2, max_side=30), "ev1": arc_task(rng, 2, 1)}
    return write_arc(root, {"training": training, "evaluation": evaluation})


def three_subset_arc(root: Path) -> Path:
    """21 tasks in 'training' (14, two of them with fewer distinct copies than asked for, so
    that duplicates are drawn),
    'evaluation' (4) and 'concept' (3): the input of the official builder's identifier
    fixture (tests/fixtures/official_arc_identifiers.json)."""
    rng = np.random.default_rng(7)
    training = {f"t{i:02d}": arc_task(rng, 2 + i % 3, 1 + i % 2, colours=2 + i if i < 4 else 10)
                for i in range(12)}
    training["mono"] = {"train": [{"input": [[5]], "output": [[5, 5]]}],   # 9 distinct copies
                        "test": [{"input": [[5]], "output": [[5, 5]]}]}
    training["blank"] = {"train": [{"input": [[0]], "output": [[0]]}],     # 1: 0 never moves
                         "test": [{"input": [[0]], "output": [[0]]}]}
    evaluation = {f"e{i}": arc_task(rng, 3, 1 + i % 2, max_side=12) for i in range(4)}
    concept = {f"c{i}": arc_task(rng, 2, 1, colours=4) for i in range(3)}
    return write_arc(root, {"training": training, "evaluation": evaluation, "concept": concept})


def built_sudoku(root: Path, n_train: int = 48, n_test: int = 20) -> Path:
    tr = write_csv(root / "sudoku_train.csv", sudoku_rows(n_train, 1))
    te = write_csv(root / "sudoku_test.csv", sudoku_rows(n_test, 2, blank="0"))
    build.build_sudoku(tr, te, root / "sudoku", num_aug=10)
    return root / "sudoku"


def built_maze(root: Path, n_train: int = 24, n_test: int = 10, size: int = 6) -> Path:
    """Generated (distinct) size x size mazes."""
    write_maze_csv(root / "maze_train.csv", n_train, size=size, seed=1, progress=False)
    write_maze_csv(root / "maze_test.csv", n_test, size=size, seed=2, progress=False)
    build.build_maze(root / "maze_train.csv", root / "maze_test.csv", root / "maze")
    return root / "maze"


def built_arc(root: Path, num_aug: int = 6) -> Path:
    small_arc(root / "arc_raw")
    build.build_arc(root / "arc_raw", ["training", "evaluation"], "evaluation", root / "arc",
                    num_aug=num_aug, progress=False)
    return root / "arc"
