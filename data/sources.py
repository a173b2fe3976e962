"""Readers of the public puzzle CSV format (`source,question,answer,rating`).

They validate every row and return compact token arrays; the first bad row raises one
DataError naming the file, line and problem. Tokens follow the official builders:
Sudoku cell 0 (blank) .. 9 -> 1..10; maze chars "# SGo" -> 1..5; 0 is PAD.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
from jaxtyping import Int, UInt8

from data.common import MAZE_CHARSET, DataError
from data.maze_gen import path_is_shortest

HEADER = ["source", "question", "answer", "rating"]
_CHUNK = 100_000


class Rows(NamedTuple):
    """Token arrays of a CSV file: inputs/labels [n, seq] (uint8), ratings [n], lines [n]."""

    inputs: UInt8[np.ndarray, "n seq"]
    labels: UInt8[np.ndarray, "n seq"]
    ratings: Int[np.ndarray, " n"]
    lines: Int[np.ndarray, " n"]


def _csv_chunks(path: Path) -> Iterator[tuple[list[str], list[str], list[int], list[int]]]:
    """(questions, answers, ratings, line numbers) in chunks; checks header and columns."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != HEADER:
            raise DataError(f"{path}, line 1: header must be {','.join(HEADER)}, got {header}")
        qs: list[str] = []
        ans: list[str] = []
        rs: list[int] = []
        lines: list[int] = []
        for row in reader:
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


def _to_bytes(path: Path, what: str, strings: list[str], lines: list[int], length: int
              ) -> np.ndarray:
    """Strings of `length` ASCII characters -> uint8 [n, length]."""
    for s, line in zip(strings, lines):
        if len(s) != length or not s.isascii():
            problem = (f"has {len(s)} characters, expected {length}" if len(s) != length
                       else "has non-ASCII characters")
            raise DataError(f"{path}, line {line}: {what} {problem}")
    return np.frombuffer("".join(strings).encode("ascii"), np.uint8).reshape(-1, length)


def _check_alphabet(path: Path, what: str, arr: np.ndarray, alphabet: str,
                    lines: list[int]) -> None:
    ok = np.isin(arr, np.frombuffer(alphabet.encode(), np.uint8))
    if not ok.all():
        r, c = np.argwhere(~ok)[0]
        raise DataError(f"{path}, line {lines[r]}: {what} character {chr(arr[r, c])!r} at "
                        f"position {c} is outside {alphabet!r}")


def _first_bad(path: Path, bad: np.ndarray, lines: list[int], problem: str) -> None:
    if bad.any():
        raise DataError(f"{path}, line {lines[int(np.argmax(bad))]}: {problem}")


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
    """Sudoku-Extreme rows: 81-char question ('.' or '0' blank) and answer (digits 1-9).

    Checks lengths, alphabets, that the answer keeps the clues and is a valid Sudoku.
    """
    path = Path(path)
    parts = []
    for qs, ans, rs, lines in _csv_chunks(path):
        q = _to_bytes(path, "question", qs, lines, 81)
        a = _to_bytes(path, "answer", ans, lines, 81)
        _check_alphabet(path, "question", q, ".0123456789", lines)
        _check_alphabet(path, "answer", a, "123456789", lines)
        qv = np.where(q == ord("."), 0, q - ord("0")).astype(np.uint8)
        av = (a - ord("0")).astype(np.uint8)
        _first_bad(path, ((qv != 0) & (qv != av)).any(1), lines,
                   "answer contradicts a clue of the question")
        g = av.reshape(-1, 9, 9)
        boxes = g.reshape(-1, 3, 3, 3, 3).transpose(0, 1, 3, 2, 4).reshape(-1, 9, 9)
        valid = np.ones(len(g), bool)
        for units in (g, g.transpose(0, 2, 1), boxes):
            valid &= (np.sort(units, axis=2) == np.arange(1, 10)).all(axis=(1, 2))
        _first_bad(path, ~valid, lines, "answer is not a valid Sudoku (a row, column or box "
                                        "repeats a digit)")
        parts.append(Rows(qv + 1, av + 1, np.array(rs, np.int64), np.array(lines, np.int64)))
    return _finish(path, parts, min_rating)


def read_maze_csv(path: Path, *, min_rating: int | None = None) -> Rows:
    """Maze-Hard rows: square grids of '# SG' (question) and '# SGo' (answer, 'o' = path).

    Checks square equal sizes, alphabets, one start and one goal, that the answer only adds
    'o' on free cells, and that those cells form a shortest start-goal path.
    """
    path = Path(path)
    lut = np.zeros(256, np.uint8)
    lut[np.frombuffer(MAZE_CHARSET.encode(), np.uint8)] = np.arange(1, len(MAZE_CHARSET) + 1)
    parts: list[Rows] = []
    size = None
    for qs, ans, rs, lines in _csv_chunks(path):
        if size is None:
            size = len(qs[0])
            n = int(round(size ** 0.5))
            if n * n != size or n < 2:
                raise DataError(f"{path}, line {lines[0]}: question length {size} is not a "
                                "square grid (n*n, n >= 2)")
        q = _to_bytes(path, "question", qs, lines, size)
        a = _to_bytes(path, "answer", ans, lines, size)
        _check_alphabet(path, "question", q, "# SG", lines)
        _check_alphabet(path, "answer", a, MAZE_CHARSET, lines)
        for ch, name in ((b"S", "start"), (b"G", "goal")):
            _first_bad(path, (q == ord(ch)).sum(1) != 1, lines,
                       f"question must have exactly one {name} {ch.decode()!r}")
        changed = q != a
        _first_bad(path, (changed & ~((q == ord(" ")) & (a == ord("o")))).any(1), lines,
                   "answer differs from the question other than by 'o' on free cells")
        qt, at = lut[q], lut[a]
        n = int(round(size ** 0.5))
        for k in range(len(q)):
            if not path_is_shortest(qt[k].reshape(n, n), at[k].reshape(n, n)):
                raise DataError(f"{path}, line {lines[k]}: the 'o' cells are not a shortest "
                                "path from S to G")
        parts.append(Rows(qt, at, np.array(rs, np.int64), np.array(lines, np.int64)))
    return _finish(path, parts, min_rating)


def subsample(rows: Rows, size: int | None, seed: int) -> Rows:
    """`size` rows drawn uniformly without replacement (seeded), in file order; all if None."""
    if size is None or size >= len(rows.inputs):
        return rows
    if size < 1:
        raise DataError(f"subsample size must be >= 1, got {size}")
    keep = np.sort(np.random.default_rng(seed).choice(len(rows.inputs), size, replace=False))
    return Rows(*(x[keep] for x in rows))
