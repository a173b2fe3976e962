"""Augmentations and their inverses: pure numpy functions, per example and batched.

Dihedral ids follow the official `dataset/common.py`: 0 identity, 1 rot90, 2 rot180, 3 rot270
(numpy `rot90`, counter-clockwise), 4 flip left-right, 5 flip up-down, 6 transpose,
7 anti-transpose (`fliplr(rot90(x))`). Batched versions gather through index maps; the
per-example ones use numpy's own rotations and serve as the reference.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from jaxtyping import Bool, Int, Integer, Shaped

from data import rng
from data.common import ARC_EOS, ARC_SIZE

DIHEDRAL_INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)
# out[i, j] = in[si, sj] with (p, q) = (j, i) if SWAP else (i, j),
# si = h-1-p if FLIP_R else p, sj = w-1-q if FLIP_C else q.
_SWAP = np.array([0, 1, 0, 1, 0, 0, 1, 1], bool)
_FLIP_R = np.array([0, 0, 1, 1, 0, 1, 0, 1], bool)
_FLIP_C = np.array([0, 1, 1, 0, 1, 0, 0, 1], bool)


def take_rows(a: Shaped[np.ndarray, "b m"], idx: Integer[np.ndarray, "b k"]
              ) -> Shaped[np.ndarray, "b k"]:
    """out[r, k] = a[r, idx[r, k]] (`np.take_along_axis` on axis 1, about twice as fast)."""
    offsets = (np.arange(a.shape[0], dtype=np.int64) * a.shape[1])[:, None]
    return np.take(np.ascontiguousarray(a).reshape(-1), idx + offsets)


# ---------------------------------------------------------------------------------------------
# Dihedral transforms


def dihedral(grid: Shaped[np.ndarray, "h w"], t: int | np.integer) -> Shaped[np.ndarray, "hh ww"]:
    """Dihedral transform `t` (0..7) of one grid, as the official `dihedral_transform`."""
    ops = (lambda a: a, lambda a: np.rot90(a, 1), lambda a: np.rot90(a, 2),
           lambda a: np.rot90(a, 3), np.fliplr, np.flipud, lambda a: a.T,
           lambda a: np.fliplr(np.rot90(a, 1)))
    return np.ascontiguousarray(ops[int(t)](grid))


def inverse_dihedral(grid: Shaped[np.ndarray, "h w"], t: int | np.integer
                     ) -> Shaped[np.ndarray, "hh ww"]:
    """Undo `dihedral(., t)`."""
    return dihedral(grid, DIHEDRAL_INVERSE[int(t)])


def _dihedral_source(t: np.ndarray, h: np.ndarray, w: np.ndarray, i: np.ndarray, j: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Source coordinates (si, sj) in an h x w grid of output cell (i, j) under transform t
    (all arguments broadcast)."""
    swap, fr, fc = _SWAP[t], _FLIP_R[t], _FLIP_C[t]
    p, q = np.where(swap, j, i), np.where(swap, i, j)
    return np.where(fr, h - 1 - p, p), np.where(fc, w - 1 - q, q)


@functools.cache
def _square_table(n: int) -> Int[np.ndarray, "8 nn"]:
    """[t, cell]: source cell of each cell of an n x n grid under dihedral transform t."""
    i, j = np.divmod(np.arange(n * n), n)
    si, sj = _dihedral_source(np.arange(8)[:, None], np.array(n), np.array(n), i[None], j[None])
    return (si * n + sj).astype(np.int64)


def dihedral_square_batch(x: Integer[np.ndarray, "b nn"], t: Integer[np.ndarray, " b"],
                          n: int) -> Integer[np.ndarray, "b nn"]:
    """Dihedral transform t[k] of row k, each row a flattened n x n grid."""
    return take_rows(x, _square_table(n)[t])


# ---------------------------------------------------------------------------------------------
# Sudoku: digit permutation, transpose, band/row and stack/column permutations


class SudokuAug(NamedTuple):
    """A batch of Sudoku symmetries: new[i, j] = digits[old'[rows[i], cols[j]]],
    old' = old.T where `transpose`; `digits` maps digit d (1..9) to digits[d - 1]."""

    digits: Int[np.ndarray, "b 9"]
    transpose: Bool[np.ndarray, " b"]
    rows: Int[np.ndarray, "b 9"]
    cols: Int[np.ndarray, "b 9"]


def sudoku_identity(batch: int) -> SudokuAug:
    """The identity symmetry, `batch` times."""
    ar = np.tile(np.arange(9), (batch, 1))
    return SudokuAug(ar + 1, np.zeros(batch, bool), ar, ar.copy())


def sudoku_random(*keys: rng.IntLike) -> SudokuAug:
    """A uniformly random symmetry per key (keys broadcast to [b])."""
    key = np.atleast_1d(rng.hash_u64(*keys))

    def lines(tag: int) -> np.ndarray:          # 3 blocks permuted, 3 lines within each
        blocks = rng.permutations(3, key, tag)                       # [b, 3]
        within = rng.permutations(3, key[:, None], tag, 1 + np.arange(3))  # [b, 3, 3]
        return (blocks[:, :, None] * 3 + within).reshape(len(key), 9)

    return SudokuAug(rng.permutations(9, key, 1) + 1, rng.randint(2, key, 2) == 1,
                     lines(3), lines(4))


def _sudoku_maps(aug: SudokuAug) -> tuple[np.ndarray, np.ndarray]:
    """(source cell index [b, 81], token map [b, 11]) of a batch of symmetries."""
    r, c = aug.rows[:, :, None], aug.cols[:, None, :]
    src = np.where(aug.transpose[:, None, None], c * 9 + r, r * 9 + c).reshape(-1, 81)
    b = len(aug.digits)
    token_map = np.concatenate([np.zeros((b, 1), np.int64), np.ones((b, 1), np.int64),
                                aug.digits + 1], axis=1)          # tokens: PAD, blank, 2..10
    return src, token_map


def sudoku_augment(tokens: Integer[np.ndarray, "b 81"], aug: SudokuAug
                   ) -> Integer[np.ndarray, "b 81"]:
    """Apply one symmetry per row to Sudoku tokens (0 PAD, 1 blank, 2..10 digits)."""
    src, token_map = _sudoku_maps(aug)
    moved = take_rows(tokens, src)
    return take_rows(token_map, moved.astype(np.int64)).astype(tokens.dtype)


def sudoku_unaugment(tokens: Integer[np.ndarray, "b 81"], aug: SudokuAug
                     ) -> Integer[np.ndarray, "b 81"]:
    """Inverse of `sudoku_augment` with the same `aug`."""
    src, token_map = _sudoku_maps(aug)
    inv_map = np.argsort(token_map, axis=1)
    unmapped = take_rows(inv_map, tokens.astype(np.int64))
    return take_rows(unmapped, np.argsort(src, axis=1)).astype(tokens.dtype)


# ---------------------------------------------------------------------------------------------
# ARC: colour permutation (0 fixed) + dihedral, 30x30 canvas with EOS, translation, crop


def apply_colours(grid: Integer[np.ndarray, "*s"], perm: Integer[np.ndarray, "10"]
                  ) -> Integer[np.ndarray, "*s"]:
    """Recolour: colour c becomes perm[c] (perm[0] == 0)."""
    return perm[grid].astype(grid.dtype)


def inverse_colours(grid: Integer[np.ndarray, "*s"], perm: Integer[np.ndarray, "10"]
                    ) -> Integer[np.ndarray, "*s"]:
    """Undo `apply_colours(., perm)`."""
    return np.argsort(perm)[grid].astype(grid.dtype)


def arc_augment(grid: Integer[np.ndarray, "h w"], t: int | np.integer,
                perm: Integer[np.ndarray, "10"]
                ) -> Integer[np.ndarray, "hh ww"]:
    """One ARC augmentation of a grid: recolour by perm, then dihedral transform t."""
    return dihedral(apply_colours(grid, perm), t)


def encode_grid(grid: Integer[np.ndarray, "h w"], row: int | np.integer = 0,
                col: int | np.integer = 0
                ) -> Int[np.ndarray, "900"]:
    """Tokens of one grid placed at (row, col) on the 30x30 canvas: colours + 2, EOS (1) on
    the row below and the column right of the grid (not their corner), PAD (0) elsewhere."""
    h, w = grid.shape
    canvas = np.zeros((ARC_SIZE, ARC_SIZE), np.int32)
    canvas[row:row + h, col:col + w] = grid + 2
    if row + h < ARC_SIZE:
        canvas[row + h, col:col + w] = ARC_EOS
    if col + w < ARC_SIZE:
        canvas[row:row + h, col + w] = ARC_EOS
    return canvas.reshape(-1)


@functools.cache
def _canvas_table() -> Int[np.ndarray, "8 30 30 901"]:
    """[t, h-1, w-1, cell]: source cell (si*30 + sj) of each canvas cell when an h x w grid
    is transformed by t and placed top-left; 900 = PAD, 901 = EOS; entry 900 is PAD (for
    cells shifted in from outside by a translation)."""
    n = ARC_SIZE
    t = np.arange(8)[:, None, None, None, None]
    h = np.arange(1, n + 1)[None, :, None, None, None]
    w = np.arange(1, n + 1)[None, None, :, None, None]
    i = np.arange(n)[None, None, None, :, None]
    j = np.arange(n)[None, None, None, None, :]
    hh, ww = np.where(_SWAP[t], w, h), np.where(_SWAP[t], h, w)
    si, sj = _dihedral_source(t, h, w, i, j)
    inside = (i < hh) & (j < ww)
    eos = ((i == hh) & (j < ww)) | ((j == ww) & (i < hh))
    table = np.where(inside, si * n + sj, np.where(eos, n * n + 1, n * n)).astype(np.int16)
    table = table.reshape(8, n, n, n * n)
    return np.concatenate([table, np.full((8, n, n, 1), n * n, np.int16)], axis=-1)


def encode_batch(grids: Integer[np.ndarray, "b 30 30"], shapes: Integer[np.ndarray, "b 2"],
                 t: Integer[np.ndarray, " b"], perm: Integer[np.ndarray, "b 10"],
                 row: Integer[np.ndarray, " b"], col: Integer[np.ndarray, " b"]
                 ) -> Int[np.ndarray, "b 900"]:
    """Vectorised `encode_grid(arc_augment(grid, t, perm), row, col)` per row.

    `grids` hold raw colours in their top-left `shapes` corner (anything outside is ignored).
    """
    b, n = len(grids), ARC_SIZE
    src = _canvas_table()[t, shapes[:, 0].astype(np.int64) - 1, shapes[:, 1].astype(np.int64) - 1]
    i = np.arange(n)[None, :] - row[:, None]
    j = np.arange(n)[None, :] - col[:, None]
    shifted = np.where((i >= 0)[:, :, None] & (j >= 0)[:, None, :],
                       i[:, :, None] * n + j[:, None, :], n * n).reshape(b, -1)
    src = take_rows(src, shifted)
    colours = take_rows(perm.astype(np.int32), grids.reshape(b, -1)) + 2
    table = np.concatenate([colours, np.tile(np.array([0, ARC_EOS], np.int32), (b, 1))], axis=1)
    return take_rows(table, src).astype(np.int32)


def transformed_shape(shapes: Integer[np.ndarray, "b 2"], t: Integer[np.ndarray, " b"]
                      ) -> Int[np.ndarray, "b 2"]:
    """(height, width) of each grid after dihedral transform t."""
    return np.where(_SWAP[t][:, None], shapes[:, ::-1], shapes).astype(np.int64)


def crop_canvas(tokens: Integer[np.ndarray, "*s"]) -> Int[np.ndarray, "h w"]:
    """Grid (colours 0..9) of a canvas of 900 tokens: the largest-area top-left rectangle
    whose rows are runs of colour tokens, as the official evaluator's `_crop`."""
    canvas = np.asarray(tokens).reshape(ARC_SIZE, ARC_SIZE)
    is_colour = (canvas >= 2) & (canvas <= 11)
    run = np.where(is_colour.all(axis=1), ARC_SIZE, np.argmin(is_colour, axis=1))
    widths = np.minimum.accumulate(run)             # columns usable by the first r+1 rows
    areas = widths * np.arange(1, ARC_SIZE + 1)
    best = int(np.argmax(areas))
    if areas[best] == 0:
        return np.zeros((0, 0), np.int32)
    return (canvas[:best + 1, :widths[best]] - 2).astype(np.int32)


def arc_inverse(tokens: Integer[np.ndarray, "*s"], t: int | np.integer,
                perm: Integer[np.ndarray, "10"]
                ) -> Int[np.ndarray, "h w"]:
    """Original-frame grid of a predicted canvas of augmentation (t, perm): crop at EOS,
    undo the dihedral transform, undo the colour permutation."""
    return inverse_colours(inverse_dihedral(crop_canvas(tokens), t), perm)
