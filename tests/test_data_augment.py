"""Augmentations: Sudoku symmetries, dihedral transforms, the ARC canvas encoding, its
inverse; expected arrays are written by hand or computed independently from the official
rules (SPEC "Data")."""

from __future__ import annotations

import numpy as np
import pytest
from test_data_fixtures import solved_sudoku

from data import augment


def is_valid_sudoku(grid: np.ndarray) -> bool:
    g = grid.reshape(9, 9)
    boxes = [g[r:r + 3, c:c + 3].ravel() for r in (0, 3, 6) for c in (0, 3, 6)]
    return all(sorted(u) == list(range(1, 10)) for u in [*g, *g.T, *boxes])


def official_style_shuffle(board: np.ndarray, aug: augment.SudokuAug, k: int) -> np.ndarray:
    """The official recipe written out with loops: transpose, then new[i, j] =
    old[rows[i], cols[j]], then relabel digits (values 0..9, 0 blank)."""
    x = board.T if aug.transpose[k] else board
    out = np.zeros((9, 9), int)
    for i in range(9):
        for j in range(9):
            v = x[aug.rows[k][i], aug.cols[k][j]]
            out[i, j] = 0 if v == 0 else aug.digits[k][v - 1]
    return out


@pytest.fixture(scope="module")
def sudoku_batch():
    """32 (puzzle, solution) pairs as tokens (blank 1, digits 2..10) and random symmetries."""
    sols = np.stack([solved_sudoku(s).ravel() for s in range(32)])
    blanks = np.random.default_rng(0).random(sols.shape) < 0.6
    puzzles = np.where(blanks, 0, sols)
    return puzzles + 1, sols + 1, augment.sudoku_random(7, np.arange(32))


def test_sudoku_augment_gives_valid_consistent_solutions(sudoku_batch):
    x, y, aug = sudoku_batch
    ax, ay = augment.sudoku_augment(x, aug), augment.sudoku_augment(y, aug)
    for k in range(len(x)):
        assert is_valid_sudoku(ay[k] - 1)
        clue = ax[k] != 1
        assert (ax[k][clue] == ay[k][clue]).all()                  # clues kept by the answer
        assert (ax[k] == 1).sum() == (x[k] == 1).sum()             # blanks stay blanks
    assert not (ax == x).all()


def test_sudoku_augment_matches_the_official_recipe(sudoku_batch):
    x, y, aug = sudoku_batch
    ay = augment.sudoku_augment(y, aug)
    ax = augment.sudoku_augment(x, aug)
    for k in range(8):
        for before, after in ((x, ax), (y, ay)):
            expected = official_style_shuffle((before[k] - 1).reshape(9, 9), aug, k)
            assert (after[k].reshape(9, 9) - 1 == expected).all()


def test_sudoku_symmetries_are_structured_bijections(sudoku_batch):
    x, _, aug = sudoku_batch
    for k in range(len(x)):
        assert sorted(aug.digits[k]) == list(range(1, 10))
        for lines in (aug.rows[k], aug.cols[k]):
            assert sorted(lines) == list(range(9))
            assert all(len({v // 3 for v in lines[b:b + 3]}) == 1 for b in (0, 3, 6))
    assert 0 < aug.transpose.mean() < 1
    assert (augment.sudoku_unaugment(augment.sudoku_augment(x, aug), aug) == x).all()
    eye = augment.sudoku_identity(len(x))
    assert (augment.sudoku_augment(x, eye) == x).all()
    again = augment.sudoku_random(7, np.arange(32))
    assert all((a == b).all() for a, b in zip(aug, again))          # keyed, deterministic


@pytest.mark.parametrize("t", range(8))
def test_dihedral_ids_match_numpy_and_invert(t):
    g = np.arange(12).reshape(3, 4)
    expected = [g, np.rot90(g), np.rot90(g, 2), np.rot90(g, 3), g[:, ::-1], g[::-1], g.T,
                np.rot90(g)[:, ::-1]][t]
    assert (augment.dihedral(g, t) == expected).all()
    assert (augment.inverse_dihedral(augment.dihedral(g, t), t) == g).all()


def test_dihedral_square_batch_equals_per_example():
    x = np.random.default_rng(1).integers(0, 6, (16, 36))
    t = np.arange(16) % 8
    out = augment.dihedral_square_batch(x, t, 6)
    for k in range(16):
        assert (out[k].reshape(6, 6) == augment.dihedral(x[k].reshape(6, 6), int(t[k]))).all()


def test_encode_grid_known_canvas():
    """2x3 grid at the top-left: colours + 2, EOS on row 2 (cols 0..2) and col 3 (rows 0..1),
    the corner (2, 3) and everything else PAD."""
    canvas = augment.encode_grid(np.array([[0, 1, 2], [7, 8, 9]])).reshape(30, 30)
    expected = np.zeros((30, 30), np.int32)
    expected[0, :4] = [2, 3, 4, 1]
    expected[1, :4] = [9, 10, 11, 1]
    expected[2, :3] = [1, 1, 1]
    assert (canvas == expected).all()
    shifted = augment.encode_grid(np.array([[5]]), 28, 4).reshape(30, 30)
    expected = np.zeros((30, 30), np.int32)
    expected[28, 4:6] = [7, 1]
    expected[29, 4] = 1
    assert (shifted == expected).all()
    full = augment.encode_grid(np.full((30, 30), 3))                 # no room for EOS
    assert (full == 5).all()
    tall = augment.encode_grid(np.zeros((30, 2), int)).reshape(30, 30)
    assert (tall[:, 2] == 1).all() and (tall[:, 3:] == 0).all()


def random_perm(rng: np.random.Generator) -> np.ndarray:
    return np.concatenate([[0], rng.permutation(9) + 1])


def test_encode_batch_equals_augment_then_encode():
    rng = np.random.default_rng(2)
    for _ in range(60):
        h, w = rng.integers(1, 31, 2)
        g = rng.integers(0, 10, (h, w))
        t, perm = int(rng.integers(8)), random_perm(rng)
        aug = augment.arc_augment(g, t, perm)
        row, col = (int(rng.integers(0, 31 - s)) for s in aug.shape)
        canvas = np.zeros((1, 30, 30), np.uint8)
        canvas[0, :h, :w] = g
        out = augment.encode_batch(canvas, np.array([[h, w]]), np.array([t]), perm[None],
                                   np.array([row]), np.array([col]))
        assert (out[0] == augment.encode_grid(aug, row, col)).all()
        assert (augment.transformed_shape(np.array([[h, w]]), np.array([t]))[0]
                == aug.shape).all()


def test_arc_inverse_restores_the_original_grid():
    rng = np.random.default_rng(3)
    for _ in range(100):
        g = rng.integers(0, 10, rng.integers(1, 31, 2))
        t, perm = int(rng.integers(8)), random_perm(rng)
        tokens = augment.encode_grid(augment.arc_augment(g, t, perm))
        assert (augment.arc_inverse(tokens, np.int32(t), perm) == g).all()
        assert (augment.inverse_colours(augment.apply_colours(g, perm), perm) == g).all()
    assert (augment.apply_colours(np.zeros((2, 2), int), random_perm(rng)) == 0).all()


def test_crop_canvas_follows_the_official_rule():
    """Largest top-left rectangle of colour tokens: row widths 5, 3, 0 -> areas 5, 6 -> 2x3."""
    canvas = np.zeros((30, 30), np.int32)
    canvas[0, :5] = [2, 3, 4, 5, 6]
    canvas[1, :4] = [7, 8, 9, 1]
    canvas[2, 0] = 1
    assert (augment.crop_canvas(canvas) == [[0, 1, 2], [5, 6, 7]]).all()
    canvas[1, 0] = 0                                                # 1 x 5 wins
    assert augment.crop_canvas(canvas).shape == (1, 5)
    assert augment.crop_canvas(np.zeros(900, np.int32)).shape == (0, 0)
