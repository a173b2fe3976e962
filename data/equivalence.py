"""Keys of puzzles up to their symmetries, vectorised: equal puzzles give equal keys.

Used to test the generators' diversity and to count train/test leaks in `data build`
(hash the keys and look them up; pairs are never compared).

- Sudoku (`sudoku_keys`): a full grid up to digit relabelling and the augmentation group
  (transpose, band and stack permutations, rows within a band, columns within a stack). The
  key is an *invariant*, not a canonical form: for rows i != j let s_ij be the permutation of
  digits with s_ij(grid[i, c]) = grid[j, c] for every column c. Any column permutation leaves
  s_ij unchanged, relabelling conjugates it, so its cycle type t_ij is invariant. The row part
  of the key hashes the 9 x 9 matrix t (with the band structure) up to band-preserving row
  permutations by two rounds of colour refinement (each row's multiset of (same band?, t_ij),
  then with the neighbours' colours), then the multiset over bands. The column part is the
  same on the transposed grid, and the key is the unordered pair of both parts (a transpose
  swaps them). So equivalent grids always have equal keys; grids with equal keys are
  equivalent unless the invariant fails to separate them, which was not seen on 20,000
  random grids (20,000 keys) nor on 19,676 pairs of grids that differ by one swapped deadly
  rectangle (4 cells); tests/test_data_equivalence.py checks invariance and separation.
- Maze (`maze_keys`): the smallest hash over the 8 dihedral transforms of the question grid.
- ARC (`arc_pair_keys`): a hash of the input and output grids of a pair (exact, no symmetry).

Hashes are 64-bit (splitmix64 chains, `data.rng.hash_u64`); a chance collision among n keys
has probability about n^2 / 2^65.
"""

from __future__ import annotations

import itertools

import numpy as np
from jaxtyping import Integer, UInt64

from data.augment import _square_table, take_rows
from data.rng import hash_u64

_PAIRS = np.array(list(itertools.combinations(range(9), 2)))       # [36, 2]
_BAND = np.arange(9) // 3
_CHUNK = 1 << 15
_ODD = np.uint64(0x9E3779B97F4A7C15)


def _fold(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Hash of a sequence along `axis` (order matters)."""
    x = np.moveaxis(x, axis, -1)
    h = np.zeros(x.shape[:-1], np.uint64)
    for k in range(x.shape[-1]):
        h = hash_u64(h, x[..., k])
    return h


def _linear(x: np.ndarray) -> np.ndarray:
    """Hash of rows of small non-negative integers [n, m] (a random-weight sum mod 2^64, then
    mixed; two different rows collide with probability about 2^-61)."""
    weights = hash_u64(0x5EED, np.arange(x.shape[-1]))
    with np.errstate(over="ignore"):
        return hash_u64((x.astype(np.uint64) + np.uint64(1)) @ weights)


def _multiset(x: np.ndarray) -> np.ndarray:
    """Hash of the multiset of values along the last axis (order does not matter)."""
    return _linear(np.sort(x, axis=-1))


def _count(same: np.ndarray) -> np.ndarray:
    """Number of True along the last axis of a bool [..., 9] (a uint8 matrix product: faster
    than sum)."""
    return (same.view(np.uint8) @ np.ones(9, np.uint8)).astype(np.int64)


def _cycle_types(rows: np.ndarray) -> np.ndarray:
    """rows [n, 9, 9] (values 0..8) -> [n, 36] cycle type of s_ij per row pair (i < j).

    s_ij is conjugate to p_ij = (column of row i holding the digit of row j at column c),
    whose inverse is p_ji. A fixed-point-free permutation of 9 elements has a2, a3, a4
    cycles of length 2, 3, 4 and at most one longer cycle (two would need 10 elements), so
    its type is given by the fixed points of p^2, p^3, p^4 (2 a2, 3 a3, 2 a2 + 4 a4), counted
    as p == p^-1, p^2 == p^-1, p^2 == p^-2; coded as f2 + 10 f3 + 100 f4.
    """
    n = len(rows)
    pos = np.empty_like(rows)                                       # [n, row, digit] -> column
    np.put_along_axis(pos, rows.astype(np.intp), np.arange(9, dtype=np.uint8)[None, None], 2)
    i, j = _PAIRS[:, 0], _PAIRS[:, 1]
    r = rows.astype(np.intp)
    flat = pos.reshape(-1)
    grid = np.arange(n, dtype=np.intp)[:, None, None] * 81
    p = flat[grid + (i * 9)[:, None] + r[:, j]]                    # [n, 36, 9]
    p_inv = flat[grid + (j * 9)[:, None] + r[:, i]]
    row = np.arange(n * 36, dtype=np.intp).reshape(n, 36, 1) * 9
    p2, p2_inv = p.reshape(-1)[row + p], p_inv.reshape(-1)[row + p_inv]
    fix = [_count(x == y) for x, y in ((p, p_inv), (p2, p_inv), (p2, p2_inv))]
    return fix[0] + 10 * fix[1] + 100 * fix[2]


def _line_part(rows: np.ndarray) -> np.ndarray:
    """Hash of the row side of the invariant: [n, 9, 9] grid -> [n]."""
    n = len(rows)
    t = np.zeros((n, 9, 9), np.int64)
    codes = _cycle_types(rows)
    t[:, _PAIRS[:, 0], _PAIRS[:, 1]] = codes
    t[:, _PAIRS[:, 1], _PAIRS[:, 0]] = codes
    same = (_BAND[:, None] == _BAND[None, :]) & ~np.eye(9, dtype=bool)
    other = _BAND[:, None] != _BAND[None, :]
    colour = np.zeros((n, 9), np.uint64)
    for _ in range(2):                   # colour refinement: own colour + neighbours' multisets
        with np.errstate(over="ignore"):                           # (t_ij, colour_j)
            pair = colour[:, None, :] * _ODD + t.astype(np.uint64)   # [n, i, j]
        near = _multiset(pair[:, same].reshape(n, 9, 2))
        far = _multiset(pair[:, other].reshape(n, 9, 6))
        colour = hash_u64(colour, near, far)
    return _multiset(_multiset(colour.reshape(n, 3, 3)))


def sudoku_keys(grids: Integer[np.ndarray, "n 81"]) -> UInt64[np.ndarray, " n"]:
    """Key of each full grid (digits 1..9, or tokens 2..10: any 9 distinct values) up to
    relabelling and the Sudoku augmentation group; see the module docstring."""
    grids = np.asarray(grids).reshape(-1, 9, 9)
    out = np.empty(len(grids), np.uint64)
    for s in range(0, len(grids), _CHUNK):
        g = grids[s:s + _CHUNK].astype(np.int64)
        g = (g - g.min(axis=(1, 2), keepdims=True)).astype(np.uint8)
        a, b = _line_part(g), _line_part(g.transpose(0, 2, 1))
        out[s:s + _CHUNK] = hash_u64(np.minimum(a, b), np.maximum(a, b))
    return out


def maze_keys(grids: Integer[np.ndarray, "n nn"]) -> UInt64[np.ndarray, " n"]:
    """Key of each flattened square grid up to the 8 dihedral transforms."""
    grids = np.asarray(grids, np.int64)
    n = round(grids.shape[1] ** 0.5)
    table = _square_table(n)
    out = np.empty(len(grids), np.uint64)
    for s in range(0, len(grids), _CHUNK):
        g = grids[s:s + _CHUNK]
        out[s:s + _CHUNK] = np.min([_linear(take_rows(g, np.broadcast_to(table[t], g.shape)))
                                    for t in range(8)], axis=0)
    return out


def arc_pair_keys(grids: Integer[np.ndarray, "n 2 30 30"], shapes: Integer[np.ndarray, "n 2 2"]
                  ) -> UInt64[np.ndarray, " n"]:
    """Key of each (input, output) pair: both shapes and the cells inside them."""
    n = len(grids)
    r = np.arange(grids.shape[2])
    inside = ((r[None, None, :, None] < shapes[:, :, :1, None])
              & (r[None, None, None, :] < shapes[:, :, 1:, None]))
    cells = np.where(inside, grids.astype(np.int64) + 1, 0).reshape(n, -1)
    return hash_u64(_fold(shapes.reshape(n, 4).astype(np.int64)), _linear(cells))


def count_leaks(train_keys: np.ndarray, test_keys: np.ndarray) -> int:
    """Number of test rows whose key occurs among the training keys."""
    return int(np.isin(test_keys, train_keys).sum())
