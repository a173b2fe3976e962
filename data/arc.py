"""ARC JSON reader, the per-task augmentation pool (with the official dedup rule) and the
(task, augmentation) <-> puzzle identifier map.

Files: `<arc_dir>/arc-agi_<subset>_challenges.json` ({task: {"train": [{input, output}],
"test": [{input}]}}) and `..._solutions.json` ({task: [output, ...]}, one per test input).
The test subset may come without solutions (ARC Prize's `arc-agi_test_challenges.json`): its
test outputs are then unknown, held as 0 x 0 grids (`UNKNOWN`), which the official builder
fills with a dummy [[0]] instead.

Pool: augmentation 0 of every task is the original; candidates (dihedral id, permutation of
colours 1..9) are drawn from a per-task seeded stream and kept only if the augmented task (the
sorted multiset of its (input, output) pairs, demonstrations and tests) differs from every
task already kept, as the official builder does, with at most 5 * num_aug candidates
(symmetric or few-colour tasks may end with fewer copies); `official_order_and_pool` draws
the candidates, and orders the tasks, from the official builder's own stream instead.
Identifiers: 0 is blank, then task t's copies k = 0..count[t]-1 are numbered consecutively.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from jaxtyping import Bool, Int, Integer, UInt8
from tqdm import tqdm

from data.augment import dihedral
from data.common import ARC_SIZE, DataError, read_json

SUBSETS = ("training", "evaluation", "concept", "training2", "evaluation2", "test")
UNKNOWN = np.zeros((0, 0), np.uint8)  # a test output the files do not give
_NOT_GIVEN = object()
RETRIES_FACTOR = 5
Pair = tuple[np.ndarray, np.ndarray]


class ArcTask(NamedTuple):
    """One task: id, subset, demonstration pairs and test pairs (uint8 grids)."""

    id: str
    subset: str
    train: list[Pair]
    test: list[Pair]


def known_outputs(shapes: Integer[np.ndarray, "n 2 2"]) -> Bool[np.ndarray, " n"]:
    """Whether each stored (input, output) pair's output is known (`UNKNOWN`: 0 x 0)."""
    return shapes[:, 1, 0] > 0


class Pool(NamedTuple):
    """Augmentations per task: dihedral [T, P], colour maps [T, P, 10], valid count [T]."""

    dihedral: UInt8[np.ndarray, "t p"]
    colours: UInt8[np.ndarray, "t p 10"]
    count: Int[np.ndarray, " t"]


def _grid(where: str, value: Any) -> np.ndarray:
    """Validate one grid: a non-empty rectangular list of lists, <= 30x30, colours 0..9."""
    if not isinstance(value, list) or not value or not all(isinstance(r, list) for r in value):
        raise DataError(f"{where}: grid must be a non-empty list of rows")
    widths = {len(r) for r in value}
    if len(widths) != 1:
        raise DataError(f"{where}: ragged grid (row lengths {sorted(widths)})")
    h, w = len(value), widths.pop()
    if not 1 <= h <= ARC_SIZE or not 1 <= w <= ARC_SIZE:
        raise DataError(f"{where}: grid is {h}x{w}, must be 1x1 to {ARC_SIZE}x{ARC_SIZE}")
    flat = [v for r in value for v in r]
    bad = [v for v in flat if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 9]
    if bad:
        raise DataError(f"{where}: colour {bad[0]!r} outside 0..9")
    return np.array(value, np.uint8)


def _pairs(where: str, examples: Any, outputs: list[Any] | None = None,
           outputs_where: str = "") -> list[Pair]:
    """(input, output) grids of `examples`; the outputs from `outputs` (the solutions file,
    named `outputs_where` in errors) when given."""
    if not isinstance(examples, list):
        raise DataError(f"{where}: must be a list of examples")
    pairs = []
    for i, ex in enumerate(examples):
        if not isinstance(ex, dict) or "input" not in ex:
            raise DataError(f"{where}[{i}]: example must have an 'input'")
        out = ex.get("output") if outputs is None else outputs[i]
        if out is None:
            raise DataError(f"{where}[{i}]: example has no 'output'")
        out_where = f"{where}[{i}].output" if outputs is None else f"{outputs_where}[{i}]"
        output = UNKNOWN if out is _NOT_GIVEN else _grid(out_where, out)
        if outputs is not None and "output" in ex and not np.array_equal(
                _grid(f"{where}[{i}].output", ex["output"]), output):
            raise DataError(f"{where}[{i}].output differs from {out_where}: the two files "
                            "disagree on this test output")
        pairs.append((_grid(f"{where}[{i}].input", ex["input"]), output))
    return pairs


def read_subset(arc_dir: Path, subset: str, *, solutions_optional: bool = False
                ) -> list[ArcTask]:
    """All tasks of one subset, with their test outputs from the solutions file; without
    one, when `solutions_optional`, from the challenges' own "output" or else `UNKNOWN`."""
    if subset not in SUBSETS:
        raise DataError(f"unknown ARC subset {subset!r} (known: {', '.join(SUBSETS)})")
    cpath = Path(arc_dir) / f"arc-agi_{subset}_challenges.json"
    spath = Path(arc_dir) / f"arc-agi_{subset}_solutions.json"
    challenges = read_json(cpath)
    if not spath.is_file() and not solutions_optional:
        raise DataError(f"{spath}: solutions file not found (needed for subset {subset!r}, "
                        "which trains; only the test subset may come without one)")
    solutions = read_json(spath) if spath.is_file() else _given_outputs(challenges)
    if not isinstance(challenges, dict) or not isinstance(solutions, dict):
        raise DataError(f"{cpath}: challenges and solutions must be JSON objects by task id")
    unknown = [tid for tid in solutions if tid not in challenges]
    if unknown:
        raise DataError(f"{spath}: task {unknown[0]} has solutions but is not in {cpath.name} "
                        f"({len(unknown)} such task(s)): files of different versions?")
    tasks = []
    for tid, task in challenges.items():
        where = f"{cpath}, task {tid}"
        if not isinstance(task, dict) or not isinstance(task.get("train"), list) \
                or not isinstance(task.get("test"), list) or not task["train"] \
                or not task["test"]:
            raise DataError(f"{where}: must have non-empty 'train' and 'test' lists")
        sols = solutions.get(tid)
        if not isinstance(sols, list) or len(sols) != len(task["test"]):
            got = ("none" if sols is None else len(sols) if isinstance(sols, list) else
                   f"a JSON {'object' if isinstance(sols, dict) else type(sols).__name__}")
            n = len(task["test"])
            raise DataError(f"{spath}, task {tid}: expected {n} solution grid"
                            f"{'s' if n != 1 else ''} (one per test input), got {got}")
        tasks.append(ArcTask(tid, subset, _pairs(f"{where}, train", task["train"]),
                             _pairs(f"{where}, test", task["test"], sols,
                                    f"{spath}, task {tid}, solution")))
    return tasks


def _given_outputs(challenges: Any) -> Any:
    """Solutions in the form of a solutions file from the challenges' test examples: their
    "output" where given, else `_NOT_GIVEN`."""
    if not isinstance(challenges, dict):
        return challenges
    return {tid: [ex.get("output", _NOT_GIVEN) if isinstance(ex, dict) else None
                  for ex in task["test"]]
            for tid, task in challenges.items()
            if isinstance(task, dict) and isinstance(task.get("test"), list)}


def read_arc(arc_dir: Path, subsets: list[str] | tuple[str, ...],
             test_subset: str | None = None) -> list[ArcTask]:
    """Tasks of several subsets, in subset then file order; task ids must be unique. Only
    `test_subset` may lack a solutions file (see `read_subset`)."""
    if not subsets:
        raise DataError("no ARC subsets given")
    repeated = sorted({s for s in subsets if list(subsets).count(s) > 1})
    if repeated:
        raise DataError(f"ARC subset {repeated[0]!r} given more than once")
    tasks: list[ArcTask] = []
    owner: dict[str, str] = {}
    for subset in subsets:
        for task in read_subset(arc_dir, subset, solutions_optional=subset == test_subset):
            if task.id in owner:
                raise DataError(f"task {task.id} appears in both subsets {owner[task.id]!r} "
                                f"and {subset!r}")
            owner[task.id] = subset
            tasks.append(task)
    return tasks


# ---------------------------------------------------------------------------------------------
# Augmentation pool


def _canonical(flat: np.ndarray, spans: list[tuple[int, int, bytes]], n_pairs: int,
               perm: np.ndarray) -> bytes:
    """Exact key of an augmented task: its sorted (input, output) pairs."""
    data = perm[flat].tobytes()
    parts = [head + data[a:b] for a, b, head in spans]
    return b"|".join(sorted(parts[2 * i] + b"/" + parts[2 * i + 1] for i in range(n_pairs)))


def _distinct_copies(task: ArcTask, num_aug: int, candidates: Iterable[tuple[int, np.ndarray]]
                     ) -> tuple[list[int], list[np.ndarray]]:
    """Dihedral ids and colour maps [10] of task's original and the candidates (dihedral id,
    colour map) whose augmented task differs from every one kept, up to num_aug + 1 copies;
    `candidates` is not advanced past the last copy kept."""
    pairs = task.train + task.test
    grids = [g for pair in pairs for g in pair]
    used = np.unique(np.concatenate([g.ravel() for g in grids]))
    layouts = []
    for t in range(8):
        moved = [dihedral(g, t) for g in grids]
        offsets = np.cumsum([0] + [g.size for g in moved])
        spans = [(int(a), int(b), bytes(g.shape)) for a, b, g in zip(offsets, offsets[1:], moved)]
        layouts.append((np.concatenate([g.ravel() for g in moved]), spans))
    identity = np.arange(10, dtype=np.uint8)
    trans, colours = [0], [identity]
    if num_aug == 0:
        return trans, colours
    seen = {_canonical(*layouts[0], len(pairs), identity)}
    tried: set[tuple[int, bytes]] = set()
    for t, perm in candidates:
        key = (t, perm[used].tobytes())
        if key in tried:
            continue
        tried.add(key)
        canon = _canonical(*layouts[t], len(pairs), perm)
        if canon in seen:
            continue
        seen.add(canon)
        trans.append(t)
        colours.append(perm)
        if len(trans) == num_aug + 1:
            break
    return trans, colours


def task_pool(task: ArcTask, num_aug: int, seed: int) -> tuple[list[int], list[np.ndarray]]:
    """Dihedral ids and colour maps [10] of task's distinct augmentations (0 = original),
    candidates drawn from a stream seeded by (seed, task id)."""
    rng = np.random.default_rng([seed, zlib.crc32(task.id.encode())])
    n = RETRIES_FACTOR * num_aug
    cand_t = rng.integers(0, 8, n)
    cand_c = np.concatenate([np.zeros((n, 1), np.uint8),
                             (np.argsort(rng.random((n, 9)), axis=1) + 1).astype(np.uint8)], 1)
    return _distinct_copies(task, num_aug, zip(cand_t.tolist(), cand_c))


def _stack(copies: list[tuple[list[int], list[np.ndarray]]], num_aug: int) -> Pool:
    """Pool of the tasks' (dihedral ids, colour maps), padded to num_aug + 1 with the identity."""
    p = num_aug + 1
    dih = np.zeros((len(copies), p), np.uint8)
    col = np.tile(np.arange(10, dtype=np.uint8), (len(copies), p, 1))
    count = np.zeros(len(copies), np.int64)
    for i, (trans, colours) in enumerate(copies):
        count[i] = len(trans)
        dih[i, :len(trans)] = trans
        col[i, :len(trans)] = np.stack(colours)
    return Pool(dih, col, count)


def build_pool(tasks: list[ArcTask], num_aug: int, seed: int, progress: bool = True) -> Pool:
    """The augmentation pool of every task (padded to num_aug + 1 with the identity)."""
    return _stack([task_pool(task, num_aug, seed) for task in
                   tqdm(tasks, desc="ARC augmentation pool", disable=not progress)], num_aug)


def official_order_and_pool(tasks: list[ArcTask], num_aug: int, seed: int,
                            progress: bool = True) -> tuple[list[ArcTask], Pool]:
    """Tasks in the official builder's order and its augmentation pool, drawn from its random
    stream (dataset/build_arc_dataset.py: numpy's legacy generator seeded once; each subset's
    tasks shuffled, then per task up to 5 * num_aug draws of a dihedral id and a permutation
    of colours 1..9, duplicates skipped), so that the puzzle identifiers are those of an
    official build of the same files, subsets, seed and num_aug (official weights' puzzle
    embeddings index them)."""
    rng = np.random.RandomState(seed)

    def draws() -> Iterator[tuple[int, np.ndarray]]:
        for _ in range(RETRIES_FACTOR * num_aug):
            t = int(rng.randint(0, 8))
            yield t, np.concatenate([[0], rng.permutation(np.arange(1, 10, dtype=np.uint8))]
                                    ).astype(np.uint8)

    ordered, copies = [], []
    bar = tqdm(total=len(tasks), desc="ARC augmentation pool", disable=not progress)
    for subset in dict.fromkeys(t.subset for t in tasks):
        group = [t for t in tasks if t.subset == subset]
        order = list(range(len(group)))
        rng.shuffle(order)
        for i in order:
            ordered.append(group[i])
            copies.append(_distinct_copies(group[i], num_aug, draws()))
            bar.update(1)
    bar.close()
    return ordered, _stack(copies, num_aug)


# ---------------------------------------------------------------------------------------------
# Identifiers


def identifier_starts(count: Integer[np.ndarray, " t"]) -> Int[np.ndarray, " t"]:
    """Identifier of each task's original (copy 0); copy k of task t is starts[t] + k."""
    return (1 + np.concatenate([[0], np.cumsum(count)[:-1]])).astype(np.int64)


def decode_identifiers(starts: Integer[np.ndarray, " t"], ids: Integer[np.ndarray, "*b"]
                       ) -> tuple[Int[np.ndarray, "*b"], Int[np.ndarray, "*b"]]:
    """(task index, augmentation index) of puzzle identifiers (>= 1)."""
    task = np.asarray(np.searchsorted(starts, ids, side="right") - 1, np.int64)
    return task, np.asarray(ids - starts[task], np.int64)
