"""One validation per puzzle kind, shared by every entry point: the CSV readers
(`python -m data build`), `evaluate.py solve` and the Python API (`trm.solve`).

`sudoku(questions, answers)` and `maze(questions, answers)` take the puzzle strings of the
public CSV format (answers may be None: a puzzle without its solution), check them, and return
their values; the first bad row raises `BadRow` (a DataError) with its index and the problem.
"""

from __future__ import annotations

import math

import numpy as np
from jaxtyping import UInt8

from data.common import MAZE_CHARSET, DataError
from data.maze_gen import bfs, path_is_shortest

SUDOKU_QUESTION_CHARS = ".0123456789"
SUDOKU_ANSWER_CHARS = "123456789"
MAZE_QUESTION_CHARS = "# SG"
_UNIT_NAMES = ("row", "column", "box")


class BadRow(DataError):
    """A bad puzzle: `row` is its index among the strings given, `problem` what is wrong."""

    def __init__(self, row: int, problem: str):
        super().__init__(problem)
        self.row, self.problem = row, problem


def _fail(bad: np.ndarray, problem: str) -> None:
    if bad.any():
        raise BadRow(int(np.argmax(bad)), problem)


def to_bytes(what: str, strings: list[str], length: int, alphabet: str
             ) -> UInt8[np.ndarray, "n length"]:
    """Strings of `length` characters from `alphabet` -> their bytes [n, length]."""
    for k, s in enumerate(strings):
        if len(s) != length:
            raise BadRow(k, f"{what} has {len(s)} characters, expected {length}")
        if not s.isascii():
            raise BadRow(k, f"{what} has non-ASCII characters")
    arr = np.frombuffer("".join(strings).encode("ascii"), np.uint8).reshape(-1, length)
    ok = np.isin(arr, np.frombuffer(alphabet.encode(), np.uint8))
    if not ok.all():
        r, c = np.argwhere(~ok)[0]
        side = math.isqrt(length)
        where = f" (row {c // side + 1}, column {c % side + 1})" if side * side == length else ""
        raise BadRow(int(r), f"{what} character {chr(arr[r, c])!r} at position {c}{where} is "
                             f"outside {alphabet!r}")
    return arr


def _units(grids: np.ndarray) -> np.ndarray:
    """[n, 81] -> [n, 27, 9]: the 9 rows, 9 columns and 9 boxes of each grid."""
    g = grids.reshape(-1, 9, 9)
    boxes = g.reshape(-1, 3, 3, 3, 3).transpose(0, 1, 3, 2, 4).reshape(-1, 9, 9)
    return np.concatenate([g, g.transpose(0, 2, 1), boxes], axis=1)


def _repeat(units: np.ndarray) -> str:
    """Where one grid's units [27, 9] first repeat a non-zero digit."""
    for u, cells in enumerate(units):
        digits = cells[cells > 0].tolist()
        twice = [d for d in set(digits) if digits.count(d) > 1]
        if twice:
            return f"digit {min(twice)} appears twice in {_UNIT_NAMES[u // 9]} {u % 9 + 1}"
    return "no repeat"


def sudoku(questions: list[str], answers: list[str] | None,
           names: tuple[str, str] = ("question", "answer")
           ) -> tuple[UInt8[np.ndarray, "n 81"], UInt8[np.ndarray, "n 81"] | None]:
    """Sudoku puzzles (81 characters, '.' or '0' blank) and solutions (81 digits 1-9) -> digits
    [n, 81] (0 blank). Checks: lengths, characters, that no clue repeats in a row, column or box,
    and that each solution is a valid Sudoku keeping its puzzle's clues. `names` call the
    puzzle and the solution in messages."""
    question, answer = names
    q = to_bytes(question, questions, 81, SUDOKU_QUESTION_CHARS)
    q = np.where(q == ord("."), 0, q - ord("0")).astype(np.uint8)
    a = None
    if answers is not None:
        a = to_bytes(answer, answers, 81, SUDOKU_ANSWER_CHARS) - np.uint8(ord("0"))
        _fail(((q != 0) & (q != a)).any(1), f"{answer} contradicts a clue of the {question}")
        units = _units(a)
        valid = (np.sort(units, axis=2) == np.arange(1, 10)).all(axis=(1, 2))
        if not valid.all():
            k = int(np.argmax(~valid))
            raise BadRow(k, f"{answer} is not a valid Sudoku ({_repeat(units[k])})")
    units = np.sort(_units(q), axis=2)
    repeats = ((units[..., 1:] == units[..., :-1]) & (units[..., 1:] > 0)).any(axis=(1, 2))
    if repeats.any():
        k = int(np.argmax(repeats))
        raise BadRow(k, f"{question} is not a valid Sudoku "
                        f"({_repeat(_units(q[k:k + 1])[0])})")
    return q, a


def maze_tokens(chars: np.ndarray) -> np.ndarray:
    """Bytes of "# SGo" -> tokens 1..5."""
    lut = np.zeros(256, np.uint8)
    lut[np.frombuffer(MAZE_CHARSET.encode(), np.uint8)] = np.arange(1, len(MAZE_CHARSET) + 1)
    return lut[chars]


def maze(questions: list[str], answers: list[str] | None, size: int | None = None,
         names: tuple[str, str] = ("question", "answer")
         ) -> tuple[UInt8[np.ndarray, "n s"], UInt8[np.ndarray, "n s"] | None]:
    """Square mazes (N*N characters of "# SG") and solutions (the maze with 'o' on the path
    cells) -> tokens 1..5 [n, N*N]. Checks: a square size shared by all, characters, exactly one
    start 'S' and one goal 'G', and that the 'o' cells are exactly one shortest S-G path (without
    a solution: that G is reachable from S). `size`: the expected N*N (default: the first's);
    `names` call the maze and the solution in messages."""
    question, answer = names
    if size is None:
        size = len(questions[0]) if questions else 0
    n = round(size ** 0.5)
    if n * n != size or n < 2:
        raise BadRow(0, f"{question} length {size} is not a square grid (n*n, n >= 2)")
    q = to_bytes(question, questions, size, MAZE_QUESTION_CHARS)
    for ch, name in ((b"S", "start"), (b"G", "goal")):
        _fail((q == ord(ch)).sum(1) != 1, f"{question} must have exactly one {name} "
                                          f"{ch.decode()!r}")
    qt = maze_tokens(q)
    if answers is None:
        dist = bfs((qt != 1).reshape(-1, n, n), (qt == 3).reshape(-1, n, n))[0]
        _fail(dist.reshape(len(q), -1)[qt == 4] < 0, "the goal 'G' is not reachable from 'S'")
        return qt, None
    a = to_bytes(answer, answers, size, MAZE_CHARSET)
    _fail(((q != a) & ~((q == ord(" ")) & (a == ord("o")))).any(1),
          f"{answer} differs from the {question} other than by 'o' on free cells")
    at = maze_tokens(a)
    for k in range(len(q)):
        if not path_is_shortest(qt[k].reshape(n, n), at[k].reshape(n, n)):
            raise BadRow(k, "the 'o' cells are not a shortest path from S to G")
    return qt, at
