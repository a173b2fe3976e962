"""Grain pipelines: training (shuffled per epoch, augmented on the fly, sharded, checkpointable)
and evaluation (deterministic, padded, every augmented copy of ARC test tasks).

Batches are dicts of numpy arrays: "inputs" int32 [B_local, seq_len], "labels" int32
[B_local, seq_len] (-100 = ignored), "puzzle_identifiers" int32 [B_local]; evaluation adds
"valid" bool, "task_index", "test_index", "aug_index" int32 [B_local] and, for ARC,
"dihedral" int32 [B_local] and "colour_perm" int32 [B_local, 10] (the forward colour map, for
`data.augment.arc_inverse`). B_local = global_batch_size / shard_count; host k of n takes rows
[k * B_local, (k + 1) * B_local) of every global batch, as the official loader does.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from pathlib import Path
from typing import Any, Literal

import grain
import numpy as np

from data import store
from data.batching import FRESH_AUG, ArcPuzzles, Batch, EpochPlan, GridPuzzles
from data.common import DataError
from data.store import DatasetMetadata, load_metadata

__all__ = ["DatasetMetadata", "load_metadata", "train_iterator", "train_dataset",
           "eval_batches", "eval_dataset", "eval_rows", "task_ids", "arc_pairs"]

NumAug = int | Literal["default", "fresh"]


def _shard(global_batch_size: int, shard_index: int | None, shard_count: int | None
           ) -> tuple[int, int, int]:
    """(shard_index, shard_count, local batch); defaults to this JAX process."""
    if shard_index is None or shard_count is None:
        import jax
        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise DataError(f"shard_index {shard_index} is not in [0, {shard_count})")
    if global_batch_size < 1 or global_batch_size % shard_count:
        raise DataError(f"global_batch_size {global_batch_size} must be a positive multiple of "
                        f"shard_count {shard_count}")
    return shard_index, shard_count, global_batch_size // shard_count


def _num_aug(value: NumAug, doc: dict[str, Any]) -> int:
    """Resolve num_aug to an int (FRESH_AUG = -1); check it against the data set."""
    if value == "fresh":
        return FRESH_AUG
    n = doc["default_num_aug"] if value == "default" else value
    if not isinstance(n, int) or n < 0:
        raise DataError(f"num_aug must be an int >= 0, 'default' or 'fresh', got {value!r}")
    if doc["name"] == "maze" and n > 7:
        raise DataError(f"maze num_aug is at most 7 (8 dihedral transforms), got {n}")
    if doc["name"] == "arc" and n > doc["default_num_aug"]:
        raise DataError(f"num_aug {n} exceeds the ARC pool built with num_aug "
                        f"{doc['default_num_aug']} (identifiers are fixed at build time)")
    return n


def _puzzles(data_dir: Path, doc: dict[str, Any], split: str) -> GridPuzzles | ArcPuzzles:
    if doc["name"] == "arc":
        return ArcPuzzles(store.read_arc(data_dir)[0], doc["aug_seed"], store.SPLITS.index(split))
    inputs, labels = store.read_puzzles(data_dir, split)
    return GridPuzzles(doc["name"], inputs, labels, doc["aug_seed"])


class _TrainBatches:
    """Global batch index -> this shard's batch (arrays load lazily, so it pickles small)."""

    def __init__(self, data_dir: Path, seed: int, num_aug: int, global_batch: int,
                 shard_index: int, local_batch: int):
        self.data_dir, self.seed, self.num_aug = data_dir, seed, num_aug
        self.global_batch, self.shard_index = global_batch, shard_index
        self.local_batch = local_batch
        self._loaded: tuple[Any, EpochPlan] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_loaded": None}

    def _load(self) -> tuple[Any, EpochPlan]:
        if self._loaded is None:
            doc = store.read_metadata_json(self.data_dir)
            puzzles = _puzzles(self.data_dir, doc, "train")
            self._loaded = (puzzles, EpochPlan(puzzles.group_sizes(), self.seed))
        return self._loaded

    def __call__(self, index: int) -> Batch:
        puzzles, plan = self._load()
        start = index * self.global_batch + self.shard_index * self.local_batch
        epoch, group, member = plan.locate(np.arange(start, start + self.local_batch))
        return puzzles.train_batch(self.num_aug, self.seed, epoch, group, member)


def train_dataset(data_dir: Path | str, *, global_batch_size: int, seed: int,
                  num_aug: NumAug = "default", epochs: int | None = None,
                  shard_index: int | None = None, shard_count: int | None = None
                  ) -> grain.MapDataset:
    """Grain MapDataset of this shard's training batches (index = global step).

    Infinite when `epochs` is None; else floor(epochs * examples_per_epoch / global_batch)
    batches (the last partial batch is dropped). Batches run across epoch boundaries, like
    the official loader within an evaluation interval. num_aug: K (fixed pool of K + 1 copies
    per puzzle, 0 = original only), "default" (the data set's: Sudoku 1000, maze 7, ARC the
    built pool) or "fresh" (new random augmentations each epoch; ARC copies then share the
    task's original identifier).
    """
    data_dir = Path(data_dir)
    doc = store.read_metadata_json(data_dir)
    shard_index, shard_count, local = _shard(global_batch_size, shard_index, shard_count)
    n_aug = _num_aug(num_aug, doc)
    if not 0 <= seed < 2**63:
        raise DataError(f"seed must be in [0, 2**63), got {seed}")
    per_epoch = doc["splits"]["train"]["examples_per_epoch"]
    if epochs is None:
        length = sys.maxsize // max(global_batch_size, 1)
    else:
        length = epochs * per_epoch // global_batch_size
        if length < 1:
            raise DataError(f"{epochs} epoch(s) of {per_epoch} examples make no full batch of "
                            f"{global_batch_size}")
    fn = _TrainBatches(data_dir, seed, n_aug, global_batch_size, shard_index, local)
    return grain.MapDataset.range(length).map(fn)


def _to_iter(ds: grain.MapDataset, num_workers: int, num_threads: int, prefetch: int
             ) -> grain.IterDataset:
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                              prefetch_buffer_size=prefetch))
    if num_workers > 0:
        from absl import flags
        if not flags.FLAGS.is_parsed():     # grain's workers read absl flags (STACK_NOTES)
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers),
                            worker_init_fn=_stopped_by_the_parent).map(_out_of_shared_memory)
    return it


def _out_of_shared_memory(batch: Batch) -> Batch:
    """A copy of a batch a worker sent: its shared-memory block is freed now, not when the
    last reference dies (a batch an interrupted step still holds would be reported leaked at
    exit)."""
    return {k: np.array(v) for k, v in batch.items()}


_PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal this process gets when its parent dies (linux/prctl.h)."""


def _stopped_by_the_parent(worker_index: int, worker_count: int) -> None:
    """In a Grain worker: Ctrl-C and a scheduler's SIGTERM reach the whole process group, and
    the parent stops its workers itself (closing its iterator frees the batches in flight), so
    a worker ignores them: no traceback, no shared memory left behind. An orphaned worker (its
    parent killed, e.g. `kill -9` or the OOM killer) ends: on Linux the kernel sends it SIGTERM
    when the parent dies (`PR_SET_PDEATHSIG`); the resource tracker then frees its shared
    memory."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    parent_pid = os.getppid() if parent is None else parent.pid

    def on_sigterm(signum: int, frame: object) -> None:
        if os.getppid() != parent_pid:
            os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before the line above
        os._exit(128 + signal.SIGTERM)


def train_iterator(data_dir: Path | str, *, global_batch_size: int, seed: int,
                   num_aug: NumAug = "default", epochs: int | None = None,
                   shard_index: int | None = None, shard_count: int | None = None,
                   num_workers: int = 0, num_threads: int = 2, prefetch: int = 4
                   ) -> grain.DatasetIterator:
    """Iterator over this shard's training batches (see `train_dataset`); `get_state` /
    `set_state` (or grain.checkpoint) restore it exactly. num_workers > 0 adds Grain
    multiprocess prefetch (`close()` it when done: it stops the worker processes and frees
    their shared memory, which Grain otherwise leaves to garbage collection); num_threads /
    prefetch set the in-process read threads."""
    ds = train_dataset(data_dir, global_batch_size=global_batch_size, seed=seed,
                       num_aug=num_aug, epochs=epochs, shard_index=shard_index,
                       shard_count=shard_count)
    return iter(_to_iter(ds, num_workers, num_threads, prefetch))


class _EvalBatches:
    def __init__(self, data_dir: Path, split: str, num_aug: int, global_batch: int,
                 shard_index: int, local_batch: int, rows: int):
        self.data_dir, self.split, self.num_aug, self.rows = data_dir, split, num_aug, rows
        self.global_batch, self.shard_index = global_batch, shard_index
        self.local_batch = local_batch
        self._puzzles: GridPuzzles | ArcPuzzles | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_puzzles": None}

    def __call__(self, index: int) -> Batch:
        if self._puzzles is None:
            self._puzzles = _puzzles(self.data_dir, store.read_metadata_json(self.data_dir),
                                     self.split)
        start = index * self.global_batch + self.shard_index * self.local_batch
        pos = np.arange(start, start + self.local_batch)
        return self._puzzles.eval_batch(self.num_aug, pos, pos < self.rows)


def eval_dataset(data_dir: Path | str, *, global_batch_size: int, split: str = "test",
                 shard_index: int | None = None, shard_count: int | None = None,
                 num_aug: NumAug = "default") -> grain.MapDataset:
    """Grain MapDataset of this shard's evaluation batches, ceil(rows / global_batch) of them.

    Rows: Sudoku / maze, the split's puzzles in file order (no augmentation); ARC, for each
    task of the split, each pooled copy k < num_aug + 1, each of its examples in the split.
    Padding rows have valid False, PAD inputs, ignored labels, blank identifier, -1 indices.
    """
    data_dir = Path(data_dir)
    shard_index, shard_count, local = _shard(global_batch_size, shard_index, shard_count)
    n_aug = _num_aug(num_aug, store.read_metadata_json(data_dir))
    rows = eval_rows(data_dir, split, n_aug)
    fn = _EvalBatches(data_dir, split, n_aug, global_batch_size, shard_index, local, rows)
    return grain.MapDataset.range(-(-rows // global_batch_size)).map(fn)


def eval_rows(data_dir: Path | str, split: str = "test", num_aug: NumAug = "default") -> int:
    """How many rows `eval_dataset` enumerates for `split` (padding excluded)."""
    data_dir = Path(data_dir)
    doc = store.read_metadata_json(data_dir)
    if split not in store.SPLITS:
        raise DataError(f"unknown split {split!r} (expected one of {store.SPLITS})")
    n_aug = _num_aug(num_aug, doc)
    if n_aug == FRESH_AUG:
        raise DataError("evaluation enumerates the fixed pool; num_aug 'fresh' is for training")
    return _puzzles(data_dir, doc, split).eval_rows(n_aug)


def eval_batches(data_dir: Path | str, *, global_batch_size: int, split: str = "test",
                 shard_index: int | None = None, shard_count: int | None = None,
                 num_aug: NumAug = "default", num_threads: int = 2) -> grain.DatasetIterator:
    """Iterator over `eval_dataset`'s batches, in order."""
    ds = eval_dataset(data_dir, global_batch_size=global_batch_size, split=split,
                      shard_index=shard_index, shard_count=shard_count, num_aug=num_aug)
    return iter(_to_iter(ds, 0, num_threads, 4))


def arc_pairs(data_dir: Path | str, split: str = "test"
              ) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Original (input, output) grids of each ARC task's examples in a split, in the order of
    the evaluation batches' "test_index" (ground truth for voting)."""
    arrays, tasks = store.read_arc(Path(data_dir))
    pairs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for r in np.flatnonzero(arrays.split == store.SPLITS.index(split)):
        (h0, w0), (h1, w1) = arrays.shapes[r].tolist()
        pairs.setdefault(tasks[arrays.task[r]][0], []).append(
            (arrays.grids[r, 0, :h0, :w0].copy(), arrays.grids[r, 1, :h1, :w1].copy()))
    return pairs


def task_ids(data_dir: Path | str) -> list[str]:
    """Names of the tasks indexed by an evaluation batch's "task_index" (ARC task ids; for
    Sudoku / maze, the row numbers of the test split as strings)."""
    doc = store.read_metadata_json(Path(data_dir))
    if doc["name"] == "arc":
        return [tid for tid, _ in store.read_arc(Path(data_dir))[1]]
    return [str(i) for i in range(doc["splits"]["test"]["total_groups"])]
