"""Offline generators writing the public CSV format, and tiny data sets built on first use."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from data import build, sudoku_gen
from data.common import MAZE_CHARSET, DataError, atomic_file
from data.maze_gen import generate_mazes
from data.sources import HEADER
from data.store import read_metadata_json

_CHUNK = 50   # Sudoku puzzles per work unit; unit i uses seed (seed, i): worker-count invariant


def _sudoku_chunk(seed: int, chunk: int, count: int, min_rating: int) -> list[tuple[str, str, int]]:
    rng = np.random.default_rng([seed, chunk])
    rows = []
    while len(rows) < count:
        puzzle, solution, rating = sudoku_gen.generate(rng)
        if rating >= min_rating:
            rows.append(("".join(str(v) if v else "." for v in puzzle),
                         "".join(map(str, solution)), rating))
    return rows


def sudoku_rows(count: int, *, seed: int = 0, min_rating: int = 0, workers: int | None = None,
                progress: bool = True) -> list[tuple[str, str, int]]:
    """`count` (question, answer, rating) rows of unique-solution Sudokus with rating >=
    min_rating, generated in parallel; the result depends only on (count, seed, min_rating)."""
    if count < 0:
        raise DataError(f"count must be >= 0, got {count}")
    sizes = [min(_CHUNK, count - i) for i in range(0, count, _CHUNK)]
    workers = min(workers or os.cpu_count() or 1, len(sizes))
    bar = tqdm(total=count, desc="sudoku", disable=not progress)
    results: list[list[tuple[str, str, int]]] = [[] for _ in sizes]
    if workers <= 1:
        for i, n in enumerate(sizes):
            results[i] = _sudoku_chunk(seed, i, n, min_rating)
            bar.update(n)
    else:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as ex:
            futures = {ex.submit(_sudoku_chunk, seed, i, n, min_rating): i
                       for i, n in enumerate(sizes)}
            for fut in concurrent.futures.as_completed(futures):
                results[futures[fut]] = fut.result()
                bar.update(sizes[futures[fut]])
    bar.close()
    return [row for chunk in results for row in chunk]


def _write_csv(out: Path, source: str, rows: list[tuple[str, str, int]]) -> None:
    with atomic_file(Path(out)) as tmp, open(tmp, "w", newline="") as f:
        f.write(",".join(HEADER) + "\n")
        f.writelines(f"{source},{q},{a},{r}\n" for q, a, r in rows)


def write_sudoku_csv(out: Path, count: int, *, seed: int = 0, min_rating: int = 0,
                     workers: int | None = None, progress: bool = True) -> None:
    """Generate Sudokus into a Sudoku-Extreme-format CSV (rating = solver guesses)."""
    rows = sudoku_rows(count, seed=seed, min_rating=min_rating, workers=workers,
                       progress=progress)
    _write_csv(out, f"generated-seed{seed}", rows)


def write_maze_csv(out: Path, count: int, *, size: int = 30, min_path_length: int | None = None,
                   unique_path: bool = True, seed: int = 0, progress: bool = True
                   ) -> np.ndarray:
    """Generate mazes into a Maze-Hard-format CSV (rating = shortest-path length in moves);
    returns the path lengths."""
    try:
        q, a, lengths = generate_mazes(count, size=size, min_path_length=min_path_length,
                                       unique_path=unique_path, seed=seed, progress=progress)
    except ValueError as e:
        raise DataError(str(e)) from None
    chars = np.array(list(MAZE_CHARSET))
    rows = [("".join(chars[qq.ravel() - 1]), "".join(chars[aa.ravel() - 1]), int(n))
            for qq, aa, n in zip(q, a, lengths)]
    _write_csv(out, f"generated-{size}x{size}-seed{seed}", rows)
    return lengths


def ensure_tiny_dataset(kind: Literal["sudoku", "maze"], out_dir: Path | str, *,
                        train_count: int, test_count: int, seed: int = 0, size: int = 10,
                        min_rating: int = 0, min_path_length: int | None = None,
                        progress: bool = False) -> Path:
    """Generate and build a small data set into `out_dir` unless it is already there.

    Maze side `size` gives seq_len size * size. An existing directory built with other
    settings raises DataError (delete it to rebuild).
    """
    out = Path(out_dir)
    recipe = dict(kind=kind, train_count=train_count, test_count=test_count, seed=seed,
                  size=size if kind == "maze" else 9, min_rating=min_rating,
                  min_path_length=min_path_length)
    if (out / "metadata.json").is_file():
        found = read_metadata_json(out)["build"].get("recipe")
        if found != recipe:
            raise DataError(f"{out} holds a data set built with {found}, not {recipe}; "
                            "delete it to rebuild")
        return out
    if kind not in ("sudoku", "maze"):
        raise DataError(f"unknown generated data set kind {kind!r} (sudoku or maze)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.csv-", dir=out.parent) as tmp:
        csv_dir = Path(tmp)
        for split, count, split_seed in (("train", train_count, 2 * seed),
                                         ("test", test_count, 2 * seed + 1)):
            if kind == "sudoku":
                write_sudoku_csv(csv_dir / f"{split}.csv", count, seed=split_seed,
                                 min_rating=min_rating, progress=progress)
            else:
                write_maze_csv(csv_dir / f"{split}.csv", count, size=size, seed=split_seed,
                               min_path_length=min_path_length, progress=progress)
        builder = build.build_sudoku if kind == "sudoku" else build.build_maze
        builder(csv_dir / "train.csv", csv_dir / "test.csv", out, seed=seed,
                info={"recipe": recipe})
    return out
