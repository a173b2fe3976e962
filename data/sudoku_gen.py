"""Sudoku solver (bitmask propagation + backtracking) and puzzle generator.

A grid is a list of 81 ints, 0 for a blank. The solver keeps a candidate bitmask per cell
(bit d-1 for digit d), propagates naked and hidden singles, and branches on the first cell with
the fewest candidates, digits in increasing order. `rating` = the number of guesses (values
tried at branch points) before the first solution: 0 means singles alone solve it.

A full grid is drawn by the same search from the empty grid with every branch trying its
digits in a fresh random order (not uniform over all grids, but no grid class is favoured by
construction: 1000 grids are 1000 classes up to relabelling and the augmentation group, see
data/equivalence.py). Clues are then removed in random order while the solution stays
unique, and `min_clues` adds random solution cells back to make the puzzle easier.
"""

from __future__ import annotations

import numpy as np

ALL = 0x1FF
_ROWS = [[r * 9 + c for c in range(9)] for r in range(9)]
_COLS = [[r * 9 + c for r in range(9)] for c in range(9)]
_BOXES = [[(br * 3 + i) * 9 + bc * 3 + j for i in range(3) for j in range(3)]
          for br in range(3) for bc in range(3)]
UNITS = _ROWS + _COLS + _BOXES
PEERS = [tuple(sorted({p for u in UNITS if c in u for p in u} - {c})) for c in range(81)]
_POP = [bin(m).count("1") for m in range(512)]
_DIGIT = {1 << d: d + 1 for d in range(9)}


def _propagate(cand: list[int], queue: list[int]) -> bool:
    """Eliminate fixed cells' digits from their peers and place hidden singles, in place;
    False on a contradiction."""
    while True:
        while queue:
            c = queue.pop()
            m = cand[c]
            for p in PEERS[c]:
                pm = cand[p]
                if pm & m:
                    pm &= ~m
                    if not pm:
                        return False
                    cand[p] = pm
                    if not pm & (pm - 1):
                        queue.append(p)
        for unit in UNITS:
            once = twice = 0
            for c in unit:
                m = cand[c]
                twice |= once & m
                once |= m
            if once != ALL:
                return False
            hidden = once & ~twice
            while hidden:
                bit = hidden & -hidden
                hidden ^= bit
                for c in unit:
                    if cand[c] & bit:
                        if cand[c] != bit:
                            cand[c] = bit
                            queue.append(c)
                        break
        if not queue:
            return True


def candidates(grid: list[int]) -> list[int] | None:
    """Candidate masks of a grid after propagation; None if it is contradictory."""
    cand = [ALL if v == 0 else 1 << (v - 1) for v in grid]
    for c, v in enumerate(grid):
        if v and any(grid[p] == v for p in PEERS[c]):
            return None
    ok = _propagate(cand, [c for c, v in enumerate(grid) if v])
    return cand if ok else None


def _search(cand: list[int], limit: int, rng: np.random.Generator | None, stats: list[int]
            ) -> list[list[int]]:
    """Up to `limit` solutions below a propagated state, digits tried in increasing order
    (in a random order per branch with `rng`); stats[0] counts guesses."""
    best, best_n = -1, 10
    for c in range(81):
        n = _POP[cand[c]]
        if 1 < n < best_n:
            best, best_n = c, n
            if n == 2:
                break
    if best < 0:
        return [[_DIGIT[m] for m in cand]]
    found: list[list[int]] = []
    digits = [d for d in range(9) if cand[best] >> d & 1]
    if rng is not None:
        digits = [digits[i] for i in rng.permutation(len(digits))]
    for d in digits:
        stats[0] += 1
        nxt = cand.copy()
        nxt[best] = 1 << d
        if _propagate(nxt, [best]):
            found += _search(nxt, limit - len(found), rng, stats)
            if len(found) >= limit:
                break
    return found


def solve(grid: list[int], limit: int = 1, rng: np.random.Generator | None = None
          ) -> tuple[list[list[int]], int]:
    """(up to `limit` solutions, guesses made); with `rng` each branch tries its digits in a
    random order (the first solution is then a random one)."""
    cand = candidates(grid)
    if cand is None:
        return [], 0
    stats = [0]
    return _search(cand, limit, rng, stats), stats[0]


def rating(grid: list[int]) -> int:
    """Guesses the deterministic solver makes before its first solution."""
    return solve(grid)[1]


def count_solutions(grid: list[int], limit: int = 2) -> int:
    """Number of solutions, counted up to `limit`."""
    return len(solve(grid, limit)[0])


def _forced(grid: list[int], c: int, v: int) -> bool:
    """Whether blank cell c must be v given the other clues (naked or hidden single)."""
    seen = 0
    for p in PEERS[c]:
        if grid[p]:
            seen |= 1 << (grid[p] - 1)
    if seen | (1 << (v - 1)) == ALL:
        return True
    for unit in UNITS:
        if c in unit and all(grid[o] or any(grid[p] == v for p in PEERS[o])
                             for o in unit if o != c):
            return True
    return False


def _still_unique(grid: list[int], c: int, v: int) -> bool:
    """Whether the puzzle `grid` (c blank; unique with c = v) stays unique."""
    if _forced(grid, c, v):
        return True
    cand = candidates(grid)
    if cand is None:
        return False
    cand[c] &= ~(1 << (v - 1))
    if not cand[c] or not _propagate(cand, [c] if not cand[c] & (cand[c] - 1) else []):
        return True
    return not _search(cand, 1, None, [0])


def random_grid(rng: np.random.Generator) -> list[int]:
    """A random full grid (randomised search from the empty grid)."""
    return solve([0] * 81, 1, rng)[0][0]


def generate(rng: np.random.Generator, min_clues: int = 0) -> tuple[list[int], list[int], int]:
    """(puzzle, solution, rating): a random full grid, then clues removed in random order
    while the solution stays unique (a minimal puzzle, ~22-26 clues), then random solution
    cells given back until there are at least `min_clues` clues (easier puzzles)."""
    solution = random_grid(rng)
    puzzle = solution.copy()
    for c in rng.permutation(81):
        v = puzzle[c]
        puzzle[c] = 0
        if not _still_unique(puzzle, int(c), v):
            puzzle[c] = v
    blanks = [c for c in range(81) if not puzzle[c]]
    for c in rng.permutation(blanks)[:max(0, min_clues - (81 - len(blanks)))]:
        puzzle[c] = solution[c]
    return puzzle, solution, rating(puzzle)
