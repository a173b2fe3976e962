"""Puzzle keys up to symmetry (data/equivalence.py) and the generators' diversity under them:
keys are invariant under each group, separate different puzzles, and generated data sets have
as many classes as puzzles, with no class shared by train and test."""

from __future__ import annotations

import numpy as np
import pytest

from data import augment, equivalence, generate, sudoku_gen
from data.maze_gen import generate_mazes


@pytest.fixture(scope="module")
def grids() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.array([sudoku_gen.random_grid(rng) for _ in range(300)])


def _rectangle_swap(grid: np.ndarray) -> np.ndarray | None:
    """The grid with one deadly rectangle's digits swapped (rows in a band, columns in two
    stacks: a different valid grid), or None when it has none."""
    g = grid.reshape(9, 9)
    for r1 in range(9):
        for r2 in range(r1 + 1, r1 // 3 * 3 + 3):
            for c1 in range(9):
                for c2 in range(c1 // 3 * 3 + 3, 9):
                    if g[r1, c1] == g[r2, c2] and g[r1, c2] == g[r2, c1]:
                        h = g.copy()
                        h[[r1, r1, r2, r2], [c1, c2, c1, c2]] = g[[r1, r1, r2, r2],
                                                                  [c2, c1, c2, c1]]
                        return h.ravel()
    return None


def test_random_grids_are_valid_and_distinct_up_to_symmetry(grids):
    g = grids.reshape(-1, 9, 9)
    boxes = g.reshape(-1, 3, 3, 3, 3).transpose(0, 1, 3, 2, 4).reshape(-1, 9, 9)
    for units in (g, g.transpose(0, 2, 1), boxes):
        assert (np.sort(units, axis=2) == np.arange(1, 10)).all()
    assert len(np.unique(equivalence.sudoku_keys(grids))) == len(grids)


def test_sudoku_keys_are_invariant_under_the_group_and_relabelling(grids):
    base = np.repeat(grids[:40] + 1, 8, axis=0)                     # tokens 2..10
    aug = augment.sudoku_random(np.arange(len(base)), 5)
    assert aug.transpose.any() and not aug.transpose.all()
    moved = augment.sudoku_augment(base, aug)
    assert (moved != base).any(axis=1).all()
    assert (equivalence.sudoku_keys(moved) == equivalence.sudoku_keys(base)).all()


def test_sudoku_keys_separate_near_identical_grids(grids):
    """A deadly-rectangle swap changes 4 cells and keeps every row/column pair's digit sets:
    the hardest case for an invariant. None of these pairs may share a key."""
    pairs = [(g, h) for g in grids[:120] if (h := _rectangle_swap(g)) is not None]
    assert len(pairs) > 100
    a, b = (np.array(x) for x in zip(*pairs))
    assert (equivalence.sudoku_keys(a) != equivalence.sudoku_keys(b)).all()


def test_generated_sudokus_have_distinct_solutions_up_to_symmetry():
    """The generator before 2026-11-30 drew one grid up to relabelling: 1 class here."""
    rows = (generate.sudoku_rows(24, seed=0, workers=1, progress=False)
            + generate.sudoku_rows(8, seed=1, workers=1, progress=False))
    answers = np.array([[int(c) for c in a] for _, a, _ in rows])
    assert len(np.unique(equivalence.sudoku_keys(answers))) == 32


def test_min_clues_gives_easier_puzzles_with_the_same_solution():
    rng = np.random.default_rng(5)
    minimal = sudoku_gen.generate(rng)
    rng = np.random.default_rng(5)
    easy = sudoku_gen.generate(rng, min_clues=40)
    assert easy[1] == minimal[1]                                   # same grid, more clues
    assert sum(map(bool, minimal[0])) < 30 and sum(map(bool, easy[0])) == 40
    assert all(p in (0, s) for p, s in zip(easy[0], easy[1]))
    assert sudoku_gen.solve(easy[0], 2)[0] == [easy[1]]
    assert easy[2] <= minimal[2]


@pytest.mark.parametrize("size, count", [(10, 200), (7, 1000)])  # 7x7: maze-tiny
def test_maze_keys_are_dihedral_invariant_and_generated_mazes_distinct(size, count):
    q, _, _ = generate_mazes(count, size=size, seed=3, progress=False)
    flat = q.reshape(len(q), -1)
    keys = equivalence.maze_keys(flat)
    assert len(np.unique(keys)) == len(q)
    for t in range(8):
        moved = augment.dihedral_square_batch(flat, np.full(len(q), t), size)
        assert (equivalence.maze_keys(moved) == keys).all()
    one_wall = flat.copy()
    one_wall[:, 0] = np.where(one_wall[:, 0] == 1, 2, 1)
    assert (equivalence.maze_keys(one_wall) != keys).all()


@pytest.mark.parametrize("kind", ["sudoku", "maze"])
def test_generated_train_and_test_share_no_class(tmp_path, kind):
    out = generate.ensure_tiny_dataset(kind, tmp_path / kind, train_count=24, test_count=12,
                                       size=8)
    key = equivalence.sudoku_keys if kind == "sudoku" else equivalence.maze_keys
    column = "labels" if kind == "sudoku" else "inputs"
    train, test = (key(np.load(out / s / f"{column}.npy")) for s in ("train", "test"))
    assert len(np.unique(np.concatenate([train, test]))) == 36
