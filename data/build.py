"""Build a data set directory from raw files: validate, convert to base arrays, write
atomically (a temporary directory renamed into place, so a failure leaves nothing)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from data import arc, equivalence, fingerprint, sources
from data.common import (
    ARC_SEQ,
    ARC_SIZE,
    ARC_VOCAB,
    MAZE_VOCAB,
    SUDOKU_VOCAB,
    DataError,
    atomic_dir,
    check_output_dir,
)
from data.store import ArcArrays, write_arc, write_metadata, write_puzzles

SUDOKU_NUM_AUG = 1000   # paper: 1000 training puzzles x (1 + 1000) copies
MAZE_NUM_AUG = 7        # all 8 dihedral transforms (official README "8 augments")
ARC_NUM_AUG = 1000


def leak_report(train_keys: np.ndarray, test_keys: np.ndarray, meaning: str, *,
                strict: bool) -> dict[str, Any]:
    """{"test_in_train": test rows whose key is among the training keys, "test": test rows,
    "equivalence": what equal keys mean}; with `strict`, a leak raises DataError."""
    n = equivalence.count_leaks(train_keys, test_keys)
    if n and strict:
        raise DataError(f"{n} of {len(test_keys)} test puzzles equal a training puzzle "
                        f"({meaning}); not building (--strict)")
    return {"test_in_train": n, "test": len(test_keys), "equivalence": meaning}


def leak_line(report: dict[str, Any]) -> str:
    """One line for the terminal."""
    return (f"leak check: {report['test_in_train']} of {report['test']} test puzzles equal a "
            f"training puzzle ({report['equivalence']})")


_GRID_EQUIVALENCE = {
    "sudoku": (lambda rows: equivalence.sudoku_keys(rows.labels),
               ("same solution up to relabelling, transpose, band/stack and row/column "
                "permutations")),
    "maze": (lambda rows: equivalence.maze_keys(rows.inputs),
             "same maze up to the 8 rotations/reflections"),
}


def _split_stats(groups: int, examples: int) -> dict[str, Any]:
    return dict(total_groups=groups, mean_puzzle_examples=1.0, total_puzzles=groups,
                examples_per_epoch=examples)


def _build_grid_puzzles(name: str, reader: Any, train_csv: Path, test_csv: Path, out: Path, *,
                        vocab: int, num_aug: int, subsample_size: int | None,
                        min_rating: int | None, seed: int, info: dict[str, Any] | None,
                        strict: bool) -> dict[str, Any]:
    """Sudoku / maze: one example per puzzle, identifiers all blank (as official); the leak
    check compares the written training puzzles with the test puzzles."""
    check_output_dir(out)  # before the work
    t0 = time.perf_counter()
    train = sources.subsample(reader(Path(train_csv), min_rating=min_rating), subsample_size,
                              seed)
    test = reader(Path(test_csv), min_rating=min_rating)
    if train.inputs.shape[1] != test.inputs.shape[1]:
        raise DataError(f"{test_csv}: rows have {test.inputs.shape[1]} cells, "
                        f"{train_csv} has {train.inputs.shape[1]}")
    keys, what = _GRID_EQUIVALENCE[name]
    leaks = leak_report(keys(train), keys(test), what, strict=strict)
    seq = int(train.inputs.shape[1])
    n, m = len(train.inputs), len(test.inputs)
    splits = {"train": _split_stats(n, n), "test": _split_stats(m, m)}
    splits["train"]["total_puzzles"] = n * (num_aug + 1)
    common = dict(name=name, vocab_size=vocab, seq_len=seq, num_puzzle_identifiers=1,
                  grid_size=int(round(seq ** 0.5)), default_num_aug=num_aug, aug_seed=seed)
    common.update(leaks=leaks, fingerprint=fingerprint.make(common))
    build = {"train_csv": str(train_csv), "test_csv": str(test_csv),
             "subsample_size": subsample_size, "min_rating": min_rating, "seed": seed,
             **(info or {})}  # info wins (a generated set names no CSV file)
    with atomic_dir(out) as tmp:
        write_puzzles(tmp, "train", train.inputs, train.labels)
        write_puzzles(tmp, "test", test.inputs, test.labels)
        build["seconds"] = round(time.perf_counter() - t0, 3)
        write_metadata(tmp, common, splits, build)
    return {**common, "splits": splits, "build": build}


def build_sudoku(train_csv: Path, test_csv: Path, out: Path, *, subsample_size: int | None = None,
                 min_rating: int | None = None, seed: int = 0, num_aug: int = SUDOKU_NUM_AUG,
                 info: dict[str, Any] | None = None, strict: bool = False) -> dict[str, Any]:
    """Sudoku-Extreme CSVs -> DIR (train subsample seeded; min_rating filters both files);
    `strict` refuses test puzzles equivalent to training ones."""
    if num_aug < 0:
        raise DataError(f"num_aug must be >= 0, got {num_aug}")
    return _build_grid_puzzles("sudoku", sources.read_sudoku_csv, train_csv, test_csv, out,
                               vocab=SUDOKU_VOCAB, num_aug=num_aug, subsample_size=subsample_size,
                               min_rating=min_rating, seed=seed, info=info, strict=strict)


def build_maze(train_csv: Path, test_csv: Path, out: Path, *, subsample_size: int | None = None,
               seed: int = 0, num_aug: int = MAZE_NUM_AUG, info: dict[str, Any] | None = None,
               strict: bool = False) -> dict[str, Any]:
    """Maze-Hard-format CSVs -> DIR (seq_len = side * side); `strict` refuses test mazes
    equivalent to training ones."""
    if not 0 <= num_aug <= 7:
        raise DataError(f"maze num_aug must be 0..7 (dihedral transforms), got {num_aug}")
    return _build_grid_puzzles("maze", sources.read_maze_csv, train_csv, test_csv, out,
                               vocab=MAZE_VOCAB, num_aug=num_aug, subsample_size=subsample_size,
                               min_rating=None, seed=seed, info=info, strict=strict)


def arc_arrays(tasks: list[arc.ArcTask], test_subset: str, pool: arc.Pool) -> ArcArrays:
    """Example table of the official split: the test subset's test pairs are the test split;
    everything else (all demonstrations, other subsets' test pairs) trains."""
    pairs, task_of, split, index = [], [], [], []
    for t, task in enumerate(tasks):
        in_test = task.subset == test_subset
        train = task.train + ([] if in_test else task.test)
        test = task.test if in_test else []
        for s, group in ((0, train), (1, test)):
            pairs += group
            task_of += [t] * len(group)
            split += [s] * len(group)
            index += range(len(group))
    grids = np.zeros((len(pairs), 2, ARC_SIZE, ARC_SIZE), np.uint8)
    shapes = np.zeros((len(pairs), 2, 2), np.uint8)
    for i, pair in enumerate(pairs):
        for k, g in enumerate(pair):
            grids[i, k, :g.shape[0], :g.shape[1]] = g
            shapes[i, k] = g.shape
    return ArcArrays(grids, shapes, np.array(task_of, np.int64), np.array(split, np.uint8),
                     np.array(index, np.int64), *pool)


def _arc_split_stats(arrays: ArcArrays, split: int) -> dict[str, Any]:
    per_task = np.bincount(arrays.task[arrays.split == split], minlength=len(arrays.pool_count))
    copies = np.where(per_task > 0, arrays.pool_count, 0)
    return dict(total_groups=int((per_task > 0).sum()),
                mean_puzzle_examples=float((copies * per_task).sum() / max(copies.sum(), 1)),
                total_puzzles=int(copies.sum()),
                examples_per_epoch=int(per_task.sum() if split == 0 else (copies * per_task).sum()))


def build_arc(arc_dir: Path, subsets: list[str], test_subset: str, out: Path, *,
              num_aug: int = ARC_NUM_AUG, seed: int = 0, progress: bool = True,
              strict: bool = False, official_rng: bool = False) -> dict[str, Any]:
    """ARC JSON subsets -> DIR: base grids, example table and augmentation pool; `strict`
    refuses test pairs that also appear (exactly) among the training rows; `official_rng`
    orders and pools the tasks as the official builder does (`arc.official_order_and_pool`:
    its puzzle identifiers). The test subset may lack a solutions file: its outputs are then
    unknown (shape 0 x 0; counted in build["unknown_test_outputs"]), never trained on, left
    out of the leak check, and evaluation only predicts them."""
    check_output_dir(out)  # before the work
    t0 = time.perf_counter()
    subsets = list(subsets)
    for s in subsets + [test_subset]:
        if s not in arc.SUBSETS:
            raise DataError(f"unknown ARC subset {s!r} (known: {', '.join(arc.SUBSETS)})")
    if test_subset not in subsets:
        raise DataError(f"test subset {test_subset!r} is not among --subsets {subsets}")
    if num_aug < 0:
        raise DataError(f"num_aug must be >= 0, got {num_aug}")
    tasks = arc.read_arc(Path(arc_dir), subsets, test_subset)
    if official_rng:
        tasks, pool = arc.official_order_and_pool(tasks, num_aug, seed, progress=progress)
    else:
        pool = arc.build_pool(tasks, num_aug, seed, progress=progress)
    arrays = arc_arrays(tasks, test_subset, pool)
    keys = equivalence.arc_pair_keys(arrays.grids, arrays.shapes)
    known = arc.known_outputs(arrays.shapes)  # an unknown one cannot equal a training pair
    leaks = leak_report(keys[arrays.split == 0], keys[(arrays.split == 1) & known],
                        "same input and output grids", strict=strict)
    common = dict(name="arc", vocab_size=ARC_VOCAB, seq_len=ARC_SEQ,
                  num_puzzle_identifiers=int(1 + pool.count.sum()), grid_size=ARC_SIZE,
                  default_num_aug=num_aug, aug_seed=seed)
    identifiers = fingerprint.arc_identifiers([(t.id, t.subset) for t in tasks], pool, seed=seed,
                                              num_aug=num_aug)
    common.update(leaks=leaks, fingerprint=fingerprint.make(common, identifiers))
    splits = {"train": _arc_split_stats(arrays, 0), "test": _arc_split_stats(arrays, 1)}
    build = dict(arc_dir=str(arc_dir), subsets=subsets, test_subset=test_subset, seed=seed,
                 official_rng=official_rng,
                 tasks=len(tasks), tasks_with_fewer_copies=int((pool.count < num_aug + 1).sum()),
                 min_copies=int(pool.count.min()),
                 test_pairs=int((arrays.split == 1).sum()),
                 unknown_test_outputs=int((~known).sum()))
    with atomic_dir(out) as tmp:
        write_arc(tmp, arrays, [(t.id, t.subset) for t in tasks])
        build["seconds"] = round(time.perf_counter() - t0, 3)
        write_metadata(tmp, common, splits, build)
    return {**common, "splits": splits, "build": build}
