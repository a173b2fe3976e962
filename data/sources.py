"""Readers of the public puzzle CSV format (`source,question,answer,rating`).

They validate every row and return compact token arrays; the first bad row raises one
DataError naming the file, line and problem. Tokens follow the official builders:
Sudoku cell 0 (blank) .. 9 -> 1..10; maze chars "# SGo" -> 1..5; 0 is PAD.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from jaxtyping import Int, UInt8

from data import validate
from data.common import DataError, require_file

HEADER = ["source", "question", "answer", "rating"]
_CHUNK = 100_000


class Rows(NamedTuple):
    """Token arrays of a CSV file: inputs/labels [n, seq] (uint8), ratings [n], lines [n]."""

    inputs: UInt8[np.ndarray, "n seq"]
    labels: UInt8[np.ndarray, "n seq"]
    ratings: Int[np.ndarray, " n"]
    lines: Int[np.ndarray, " n"]


def _csv_chunks(path: Path) -> Iterator[tuple[list[str], list[str], list[int], list[int]]]:
    """(questions, answers, ratings, line numbers) in chunks; checks header and columns.
    A UTF-8 byte-order mark and empty lines at the end of the file are accepted."""
    require_file(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            yield from _rows(path, csv.reader(f))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _rows(path: Path, reader: Any) -> Iterator[tuple[list[str], list[str], list[int], list[int]]]:
    header = next(reader, None)
    if header is None:
        raise DataError(f"{path}: empty file (expected the header {','.join(HEADER)} and rows)")
    if header != HEADER:
        raise DataError(f"{path}, line 1: header must be {','.join(HEADER)}, got {header}")
    qs: list[str] = []
    ans: list[str] = []
    rs: list[int] = []
    lines: list[int] = []
    empty = None
    for row in reader:
        if not row:
            empty = empty or reader.line_num
            continue
        if empty is not None:
            raise DataError(f"{path}, line {empty}: empty line (only allowed at the end)")
        if len(row) != 4:
            raise DataError(f"{path}, line {reader.line_num}: expected 4 columns, "
                            f"got {len(row)}")
        try:
            rs.append(int(row[3]))
        except ValueError:
            raise DataError(f"{path}, line {reader.line_num}: rating {row[3]!r} is not "
                            "an integer") from None
        qs.append(row[1])
        ans.append(row[2])
        lines.append(reader.line_num)
        if len(qs) == _CHUNK:
            yield qs, ans, rs, lines
            qs, ans, rs, lines = [], [], [], []
    if qs:
        yield qs, ans, rs, lines


def _finish(path: Path, parts: list[Rows], min_rating: int | None) -> Rows:
    if not parts:
        raise DataError(f"{path}: no puzzle rows")
    rows = Rows(*(np.concatenate(x) for x in zip(*parts)))
    if min_rating is not None:
        keep = rows.ratings >= min_rating
        if not keep.any():
            raise DataError(f"{path}: no row has rating >= {min_rating}")
        rows = Rows(*(x[keep] for x in rows))
    return rows


def read_sudoku_csv(path: Path, *, min_rating: int | None = None) -> Rows:
    """Sudoku-Extreme rows: 81-char question ('.' or '0' blank) and answer (digits 1-9),
    checked by `data.validate.sudoku`."""
    path = Path(path)
    parts = []
    for qs, ans, rs, lines in _csv_chunks(path):
        try:
            q, a = validate.sudoku(qs, ans)
        except validate.BadRow as e:
            raise DataError(f"{path}, line {lines[e.row]}: {e.problem}") from None
        parts.append(Rows(q + 1, a + 1, np.array(rs, np.int64), np.array(lines, np.int64)))
    return _finish(path, parts, min_rating)


def read_maze_csv(path: Path, *, min_rating: int | None = None) -> Rows:
    """Maze-Hard rows: square grids of '# SG' (question) and '# SGo' (answer, 'o' = path),
    checked by `data.validate.maze`."""
    path = Path(path)
    parts: list[Rows] = []
    size = None
    for qs, ans, rs, lines in _csv_chunks(path):
        try:
            q, a = validate.maze(qs, ans, size)
        except validate.BadRow as e:
            raise DataError(f"{path}, line {lines[e.row]}: {e.problem}") from None
        size = q.shape[1]
        parts.append(Rows(q, a, np.array(rs, np.int64), np.array(lines, np.int64)))
    return _finish(path, parts, min_rating)


def subsample(rows: Rows, size: int | None, seed: int) -> Rows:
    """`size` rows drawn uniformly without replacement (seeded), in file order; all if None."""
    if size is None or size >= len(rows.inputs):
        return rows
    if size < 1:
        raise DataError(f"subsample size must be >= 1, got {size}")
    keep = np.sort(np.random.default_rng(seed).choice(len(rows.inputs), size, replace=False))
    return Rows(*(x[keep] for x in rows))
