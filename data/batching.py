"""Vectorised batch assembly: stream positions -> (epoch, puzzle, example) -> augmented tokens.

The training stream is the concatenation of epochs; epoch e visits every group (a base puzzle;
for ARC a task) once, in an order shuffled by (seed, e), and emits all of the group's training
examples (one for Sudoku and maze). Each visit picks one augmentation of the group: with a
fixed pool (`num_aug` = K), copy k in 0..K (0 = original) drawn by (seed, e, group) and its
parameters fixed by (aug_seed, group, k), like the official pre-built sets; with "fresh",
parameters drawn by (seed, e, group). All randomness is `data.rng` hashing: no state.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from jaxtyping import Int, Integer

from data import augment, rng
from data.arc import identifier_starts, known_outputs
from data.common import ARC_SIZE, IGNORE_LABEL_ID
from data.store import ArcArrays

Batch = dict[str, np.ndarray]
FRESH_AUG = -1   # num_aug value meaning "fresh random augmentations every epoch"


def _labels(tokens: np.ndarray) -> np.ndarray:
    """int32 labels with PAD (0) ignored."""
    return np.where(tokens == 0, IGNORE_LABEL_ID, tokens).astype(np.int32)


class EpochPlan:
    """Shuffled group order per epoch and the lookup of stream positions."""

    def __init__(self, sizes: Integer[np.ndarray, " g"], seed: int):
        self.sizes = np.asarray(sizes, np.int64)
        self.seed = seed
        self.epoch_len = int(self.sizes.sum())
        self._recent: tuple[tuple[int, np.ndarray, np.ndarray], ...] = ()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_recent": ()}

    def order(self, epoch: int) -> tuple[Int[np.ndarray, " g"], Int[np.ndarray, " g"]]:
        """(group order, cumulative example count along it) of one epoch (the last 4 are
        cached; the cache tuple is replaced whole, so reader threads need no lock)."""
        for e, perm, ends in self._recent:
            if e == epoch:
                return perm, ends
        perm = np.argsort(rng.hash_u64(self.seed, rng.SHUFFLE, epoch,
                                       np.arange(len(self.sizes))), kind="stable")
        ends = np.cumsum(self.sizes[perm])
        self._recent = ((epoch, perm, ends),) + self._recent[:3]
        return perm, ends

    def locate(self, pos: Int[np.ndarray, " n"]
               ) -> tuple[Int[np.ndarray, " n"], Int[np.ndarray, " n"], Int[np.ndarray, " n"]]:
        """(epoch, group, example within group) of stream positions."""
        epoch, off = np.divmod(pos, self.epoch_len)
        group, member = np.zeros_like(pos), np.zeros_like(pos)
        for e in np.unique(epoch).tolist():
            sel = epoch == e
            perm, ends = self.order(int(e))
            j = np.searchsorted(ends, off[sel], side="right")
            group[sel] = perm[j]
            member[sel] = off[sel] - (ends[j] - self.sizes[perm[j]])
        return epoch, group, member


def pool_index(num_aug: int, pool_size: rng.IntLike, seed: int,
               epoch: Int[np.ndarray, " n"], group: Int[np.ndarray, " n"]) -> Int[np.ndarray, " n"]:
    """Copy drawn from each group's pool (0 with num_aug 0 or in fresh mode)."""
    if num_aug <= 0:
        return np.zeros_like(group)
    size = np.minimum(pool_size, num_aug + 1)
    return rng.randint(size, seed, rng.AUG_INDEX, epoch, group)


def _pad_rows(valid: np.ndarray, batch: Batch) -> Batch:
    """Blank the rows that are not `valid`: PAD inputs, ignored labels, blank identifier,
    -1 indices."""
    v = valid.reshape(-1, 1)
    out = dict(batch, valid=valid,
               inputs=np.where(v, batch["inputs"], 0).astype(np.int32),
               labels=np.where(v, batch["labels"], IGNORE_LABEL_ID).astype(np.int32),
               puzzle_identifiers=np.where(valid, batch["puzzle_identifiers"], 0).astype(np.int32))
    for k in ("task_index", "test_index", "aug_index"):
        out[k] = np.where(valid, batch[k], -1).astype(np.int32)
    return out


class GridPuzzles:
    """Sudoku / maze: uint8 tokens [n, side*side], one example per puzzle, blank identifiers.
    Sudoku copy k > 0 is a random symmetry; maze copy k is dihedral transform k (k <= 7)."""

    def __init__(self, kind: str, inputs: np.ndarray, labels: np.ndarray, aug_seed: int):
        self.kind, self.inputs, self.labels, self.aug_seed = kind, inputs, labels, aug_seed
        self.side = int(round(inputs.shape[1] ** 0.5))

    def group_sizes(self) -> Int[np.ndarray, " g"]:
        return np.ones(len(self.inputs), np.int64)

    def train_batch(self, num_aug: int, seed: int, epoch: Int[np.ndarray, " n"],
                    group: Int[np.ndarray, " n"], member: Int[np.ndarray, " n"]) -> Batch:
        """Augmented training rows of the given (epoch, group) visits."""
        x, y = np.asarray(self.inputs[group]), np.asarray(self.labels[group])
        if num_aug == FRESH_AUG:
            key, copy = rng.hash_u64(seed, rng.FRESH, epoch, group), np.full_like(group, -1)
        else:
            copy = pool_index(num_aug, num_aug + 1, seed, epoch, group)
            key = rng.hash_u64(self.aug_seed, rng.POOL, group, copy)
        if self.kind == "sudoku":
            aug = augment.sudoku_random(key)
            eye, ident = augment.sudoku_identity(len(key)), copy == 0
            aug = augment.SudokuAug(*(np.where(ident.reshape((-1,) + (1,) * (a.ndim - 1)), e, a)
                                      for a, e in zip(aug, eye)))
            x, y = augment.sudoku_augment(x, aug), augment.sudoku_augment(y, aug)
        else:
            t = np.where(copy >= 0, copy, rng.randint(8, key)).astype(np.int64)
            x = augment.dihedral_square_batch(x, t, self.side)
            y = augment.dihedral_square_batch(y, t, self.side)
        return {"inputs": x.astype(np.int32), "labels": _labels(y),
                "puzzle_identifiers": np.zeros(len(group), np.int32)}

    def eval_rows(self, num_aug: int) -> int:
        return len(self.inputs)

    def eval_batch(self, num_aug: int, rows: Int[np.ndarray, " n"], valid: np.ndarray) -> Batch:
        """Unaugmented rows of this split (invalid rows are padding)."""
        safe = np.where(valid, rows, 0)
        zeros = np.zeros(len(rows), np.int32)
        batch = {"inputs": np.asarray(self.inputs[safe]), "labels": _labels(self.labels[safe]),
                 "puzzle_identifiers": zeros, "task_index": safe, "test_index": zeros,
                 "aug_index": zeros}
        return _pad_rows(valid, batch)


class ArcPuzzles:
    """ARC: a group is a task; its training examples share the drawn augmentation (one
    puzzle identifier per (task, copy)); training examples are translated on the canvas
    except one per visit (as official)."""

    def __init__(self, arrays: ArcArrays, aug_seed: int, split: int):
        self.a, self.aug_seed = arrays, aug_seed
        self.starts = identifier_starts(arrays.pool_count)
        self.rows = np.flatnonzero(arrays.split == split)           # grouped by task
        self.sizes = np.bincount(arrays.task[self.rows], minlength=len(arrays.pool_count))
        self.first = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])

    def group_sizes(self) -> Int[np.ndarray, " g"]:
        return self.sizes

    def _encode(self, rows: np.ndarray, t: np.ndarray, perm: np.ndarray, r0: np.ndarray,
                c0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        g, s = self.a.grids[rows], self.a.shapes[rows]
        labels = _labels(augment.encode_batch(g[:, 1], s[:, 1], t, perm, r0, c0))
        return (augment.encode_batch(g[:, 0], s[:, 0], t, perm, r0, c0),
                np.where(known_outputs(s)[:, None], labels, IGNORE_LABEL_ID))

    def train_batch(self, num_aug: int, seed: int, epoch: Int[np.ndarray, " n"],
                    group: Int[np.ndarray, " n"], member: Int[np.ndarray, " n"]) -> Batch:
        """Augmented, translated training rows of the given (epoch, task, example) visits."""
        rows = self.rows[self.first[group] + member]
        if num_aug == FRESH_AUG:
            key = rng.hash_u64(seed, rng.FRESH, epoch, group)
            t = rng.randint(8, key, rng.DIHEDRAL)
            perm = np.concatenate([np.zeros((len(key), 1), np.int64),
                                   rng.permutations(9, key, rng.COLOURS) + 1], axis=1)
            ident = self.starts[group]
        else:
            copy = pool_index(num_aug, self.a.pool_count[group], seed, epoch, group)
            key = rng.hash_u64(self.aug_seed, rng.POOL, group, copy)
            t = self.a.pool_dihedral[group, copy].astype(np.int64)
            perm = self.a.pool_colours[group, copy].astype(np.int64)
            ident = self.starts[group] + copy
        shp = np.maximum(augment.transformed_shape(self.a.shapes[rows, 0], t),
                         augment.transformed_shape(self.a.shapes[rows, 1], t))
        still = member == rng.randint(self.sizes[group], key, rng.NO_TRANSLATE)
        room = ARC_SIZE + 1 - shp                                     # offsets that fit
        r0 = np.where(still, 0, rng.randint(room[:, 0], key, rng.TRANSLATE, member, 0))
        c0 = np.where(still, 0, rng.randint(room[:, 1], key, rng.TRANSLATE, member, 1))
        x, y = self._encode(rows, t, perm, r0, c0)
        return {"inputs": x, "labels": y, "puzzle_identifiers": ident.astype(np.int32)}

    def _eval_table(self, num_aug: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        tasks = np.flatnonzero(self.sizes > 0)
        copies = np.minimum(self.a.pool_count[tasks], num_aug + 1)
        return tasks, copies, np.cumsum(copies * self.sizes[tasks])

    def eval_rows(self, num_aug: int) -> int:
        ends = self._eval_table(num_aug)[2]
        return int(ends[-1]) if len(ends) else 0

    def eval_batch(self, num_aug: int, pos: Int[np.ndarray, " n"], valid: np.ndarray) -> Batch:
        """Rows enumerating task x copy x example of this split, in that order, unshifted."""
        tasks, copies, ends = self._eval_table(num_aug)
        pos = np.where(valid, pos, 0)
        i = np.searchsorted(ends, pos, side="right")
        task = tasks[i]
        off = pos - (ends[i] - copies[i] * self.sizes[task])
        copy, member = np.divmod(off, self.sizes[task])
        rows = self.rows[self.first[task] + member]
        t = self.a.pool_dihedral[task, copy].astype(np.int64)
        perm = self.a.pool_colours[task, copy].astype(np.int64)
        zero = np.zeros_like(pos)
        x, y = self._encode(rows, t, perm, zero, zero)
        batch = {"inputs": x, "labels": y, "puzzle_identifiers": self.starts[task] + copy,
                 "task_index": task, "test_index": self.a.index[rows], "aug_index": copy}
        out = _pad_rows(valid, batch)
        out["dihedral"] = np.where(valid, t, 0).astype(np.int32)
        out["colour_perm"] = np.where(valid[:, None], perm, np.arange(10)).astype(np.int32)
        return out
