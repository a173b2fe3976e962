"""Grain pipelines: determinism, per-host shards, exact restore, epochs, augmentation
semantics end to end, padded evaluation and ARC copies mapped back to the original grids."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grain
import numpy as np
import pytest
from test_data_fixtures import built_arc, built_maze, built_sudoku

from data import augment, pipeline
from data.arc import decode_identifiers, identifier_starts
from data.common import DataError
from data.store import read_arc, read_puzzles

KEYS = ("inputs", "labels", "puzzle_identifiers")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return {"sudoku": built_sudoku(root), "maze": built_maze(root), "arc": built_arc(root)}


def take(it, n: int) -> list[dict]:
    return [next(it) for _ in range(n)]


def same(a: list[dict], b: list[dict]) -> bool:
    return all((x[k] == y[k]).all() for x, y in zip(a, b, strict=True) for k in KEYS)


def train(d, **kw):
    kw = {"global_batch_size": 8, "seed": 0, "shard_index": 0, "shard_count": 1, **kw}
    return pipeline.train_iterator(d, **kw)


@pytest.mark.parametrize("kind", ["sudoku", "maze", "arc"])
def test_batches_have_the_promised_shapes_and_are_deterministic(dirs, kind):
    meta = pipeline.load_metadata(dirs[kind])
    a = take(train(dirs[kind], global_batch_size=8, shard_index=1, shard_count=2), 3)
    for b in a:
        assert set(b) == set(KEYS)
        assert b["inputs"].shape == b["labels"].shape == (4, meta.seq_len)
        assert b["inputs"].dtype == b["labels"].dtype == b["puzzle_identifiers"].dtype == np.int32
        assert b["inputs"].min() >= 0 and b["inputs"].max() < meta.vocab_size
        labels = b["labels"]
        assert ((labels == -100) | ((labels >= 1) & (labels < meta.vocab_size))).all()
        assert (b["puzzle_identifiers"] < meta.num_puzzle_identifiers).all()
    assert same(a, take(train(dirs[kind], global_batch_size=8, shard_index=1, shard_count=2), 3))
    assert not same(a, take(train(dirs[kind], global_batch_size=8, shard_index=1,
                                  shard_count=2, seed=1), 3))
    default = next(pipeline.train_iterator(dirs[kind], global_batch_size=8, seed=0))
    assert default["inputs"].shape == (8, meta.seq_len)          # one JAX process: shard 0/1


def row_ids(batch: dict, base: np.ndarray) -> list[int]:
    """Index of each (unaugmented) input row in the base array."""
    lookup = {row.tobytes(): i for i, row in enumerate(base.astype(np.int32))}
    return [lookup[r.tobytes()] for r in batch["inputs"]]


@pytest.mark.parametrize("kind", ["sudoku", "maze"])
def test_two_hosts_get_disjoint_shards_covering_each_epoch(dirs, kind):
    base = np.asarray(read_puzzles(dirs[kind], "train")[0])
    n = len(base)                                   # 48 sudoku / 24 maze puzzles
    seen = {0: [], 1: []}
    for host in (0, 1):
        it = train(dirs[kind], global_batch_size=8, shard_index=host, shard_count=2, num_aug=0)
        for b in take(it, 2 * n // 8):              # two epochs
            seen[host] += row_ids(b, base)
    for epoch in range(2):
        parts = [seen[h][epoch * n // 2:(epoch + 1) * n // 2] for h in (0, 1)]
        assert not set(parts[0]) & set(parts[1])
        assert sorted(parts[0] + parts[1]) == list(range(n))
    assert seen[0][: n // 2] != seen[0][n // 2:]      # reshuffled each epoch


def test_restored_iterator_continues_identically(dirs):
    for kind in ("sudoku", "arc"):
        it = train(dirs[kind])
        take(it, 3)
        state = it.get_state()
        expected = take(it, 4)
        fresh = train(dirs[kind])
        fresh.set_state(state)
        assert same(take(fresh, 4), expected)


def test_restore_through_multiprocess_prefetch(dirs):
    it = train(dirs["sudoku"], num_workers=1)
    first = take(it, 3)
    state = it.get_state()
    expected = take(it, 3)
    assert same(first, take(train(dirs["sudoku"]), 3))            # same batches as in-process
    fresh = train(dirs["sudoku"], num_workers=1)
    fresh.set_state(state)
    assert same(take(fresh, 3), expected)


_HOLD_A_BATCH = """
import sys, time
from data.pipeline import train_iterator
from trm.cli import sigterm_as_interrupt
it = train_iterator(sys.argv[1], global_batch_size=8, seed=0, num_workers=1)
try:
    with sigterm_as_interrupt():
        batch = next(it)  # a batch from a worker, still held when the signal comes
        print("ready", flush=True)
        time.sleep(120)
except KeyboardInterrupt:
    print("interrupted", flush=True)
finally:
    it.close()
    del it
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_group_stops_the_worker_processes_quietly(dirs, sig):
    """Ctrl-C (and a scheduler's SIGTERM) reach the whole process group: the workers neither
    print tracebacks nor leave shared memory behind (the resource tracker's "leaked
    shared_memory" warning at exit)."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_A_BATCH, str(dirs["sudoku"])], cwd=ROOT,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        assert proc.stdout.readline() == "ready\n", proc.stderr.read()
        os.killpg(proc.pid, sig)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert (out, proc.returncode) == ("interrupted\n", 0), err
    assert "Traceback" not in err and "leaked" not in err, err


def _children(pid):
    """Child process ids of `pid` (Linux /proc)."""
    tasks = Path(f"/proc/{pid}/task")
    return {int(c) for t in tasks.iterdir() for c in (t / "children").read_text().split()}


def _alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_the_workers_end_when_their_parent_is_killed(dirs):
    """`kill -9` (or the OOM killer) on a run with loader workers left them running for good
    (~200 MB each) with their shared memory: now they end, and so does the resource tracker
    (which frees the shared memory when its last user is gone)."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_A_BATCH, str(dirs["sudoku"])], cwd=ROOT,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        assert proc.stdout.readline() == "ready\n", proc.stderr.read()
        children = _children(proc.pid)
        assert children  # the worker and the resource tracker
        proc.kill()
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(map(_alive, children)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(map(_alive, children))
    finally:
        proc.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_explicit_epochs_drop_the_last_partial_batch(dirs):
    batches = list(train(dirs["sudoku"], global_batch_size=10, epochs=3))
    assert len(batches) == 3 * 48 // 10
    with pytest.raises(DataError, match="make no full batch"):
        train(dirs["sudoku"], global_batch_size=64, epochs=1)
    with pytest.raises(DataError, match="multiple of shard_count 3"):
        train(dirs["sudoku"], global_batch_size=8, shard_index=0, shard_count=3)
    with pytest.raises(DataError, match="exceeds the ARC pool"):
        train(dirs["arc"], num_aug=100)


def test_sudoku_pool_copies_are_fixed_and_valid(dirs):
    outputs: dict[tuple[int, bytes], int] = {}
    for b in take(train(dirs["sudoku"], num_aug=2, global_batch_size=48), 30):
        for x, y in zip(b["inputs"], b["labels"]):
            sol = y.reshape(9, 9) - 1
            assert all(sorted(u) == list(range(1, 10)) for u in [*sol, *sol.T])
            clue = x != 1
            assert (x[clue] == y[clue]).all()
            outputs[(int((x == 1).sum()), y.tobytes())] = 1
    # 48 puzzles x 3 copies (identity + 2 fixed symmetries) -> at most 144 distinct rows
    assert 48 < len(outputs) <= 144
    fresh = {y.tobytes() for b in take(train(dirs["sudoku"], num_aug="fresh",
                                             global_batch_size=48), 5) for y in b["labels"]}
    assert len(fresh) == 5 * 48


def test_maze_copies_are_dihedral_transforms(dirs):
    base = np.asarray(read_puzzles(dirs["maze"], "train")[0]).astype(np.int32)
    variants = {augment.dihedral(r.reshape(6, 6), t).tobytes(): t
                for r in base for t in range(8)}
    used = set()
    for b in take(train(dirs["maze"], num_aug=3), 30):
        used |= {variants[x.reshape(6, 6).tobytes()] for x in b["inputs"]}
    assert used == {0, 1, 2, 3}


def untranslate(tokens: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """The canvas shifted back to the top-left corner, and the shift."""
    canvas = tokens.reshape(30, 30)
    r = int(np.flatnonzero(canvas.any(1))[0])
    c = int(np.flatnonzero(canvas.any(0))[0])
    out = np.zeros_like(canvas)
    out[:30 - r, :30 - c] = canvas[r:, c:]
    return out, (r, c)


def grid_key(g: np.ndarray) -> tuple:
    return g.shape, g.astype(np.uint8).tobytes()


def test_arc_training_rows_map_back_to_their_task_examples(dirs):
    arrays, _ = read_arc(dirs["arc"])
    starts = identifier_starts(arrays.pool_count)
    originals = {}
    for r in np.flatnonzero(arrays.split == 0):
        (h0, w0), (h1, w1) = arrays.shapes[r]
        key = (grid_key(arrays.grids[r, 0, :h0, :w0]), grid_key(arrays.grids[r, 1, :h1, :w1]))
        originals.setdefault(int(arrays.task[r]), set()).add(key)
    counts, translated, copies = {}, 0, set()
    for b in take(train(dirs["arc"], global_batch_size=arrays.split.size), 6):
        for x, y, pid in zip(b["inputs"], b["labels"], b["puzzle_identifiers"]):
            task, copy = (int(v[()]) for v in decode_identifiers(starts, np.array(pid)))
            t, perm = arrays.pool_dihedral[task, copy], arrays.pool_colours[task, copy]
            (ux, ox), (uy, oy) = untranslate(x), untranslate(np.where(y == -100, 0, y))
            assert ox == oy                                  # input and output move together
            translated += int(ox != (0, 0))
            gx, gy = augment.arc_inverse(ux, t, perm), augment.arc_inverse(uy, t, perm)
            assert (grid_key(gx), grid_key(gy)) in originals[task]
            counts[task] = counts.get(task, 0) + 1
            copies.add((task, copy))
    assert translated > 0 and len(copies) > len(originals)
    per_epoch = np.bincount(arrays.task[arrays.split == 0])
    epochs_seen = 6 * arrays.split.size / per_epoch.sum()
    assert all(abs(counts[t] - per_epoch[t] * epochs_seen) <= 2 * per_epoch[t] for t in counts)


@pytest.mark.parametrize("kind", ["sudoku", "maze"])
def test_eval_batches_are_padded_and_sharded_in_order(dirs, kind):
    x, y = (np.asarray(a).astype(np.int32) for a in read_puzzles(dirs[kind], "test"))
    full = list(pipeline.eval_batches(dirs[kind], global_batch_size=8, shard_index=0,
                                      shard_count=1))
    assert len(full) == -(-len(x) // 8)
    rows = {k: np.concatenate([b[k] for b in full]) for k in full[0]}
    v = rows["valid"]
    assert v.sum() == len(x) and v[: len(x)].all()
    assert (rows["inputs"][v] == x).all() and (rows["labels"][v] == y).all()
    assert (rows["inputs"][~v] == 0).all() and (rows["labels"][~v] == -100).all()
    assert (rows["puzzle_identifiers"] == 0).all() and (rows["task_index"][~v] == -1).all()
    halves = [list(pipeline.eval_batches(dirs[kind], global_batch_size=8, shard_index=h,
                                         shard_count=2)) for h in (0, 1)]
    merged = np.concatenate([np.concatenate([a["inputs"], b["inputs"]])
                             for a, b in zip(*halves)])
    assert (merged == rows["inputs"]).all()


def test_arc_eval_enumerates_every_copy_and_inverts_to_the_truth(dirs):
    arrays, tasks = read_arc(dirs["arc"])
    truth = pipeline.arc_pairs(dirs["arc"])
    meta = pipeline.load_metadata(dirs["arc"], "test")
    batches = list(pipeline.eval_batches(dirs["arc"], global_batch_size=16, shard_index=0,
                                         shard_count=1))
    rows = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    v = rows["valid"]
    assert v.sum() == meta.examples_per_epoch and not v[v.sum():].any()
    names = pipeline.task_ids(dirs["arc"])
    expected = {(t, k, j) for t, (tid, _) in enumerate(tasks) if tid in truth
                for k in range(arrays.pool_count[t]) for j in range(len(truth[tid]))}
    got = list(zip(rows["task_index"][v].tolist(), rows["aug_index"][v].tolist(),
                   rows["test_index"][v].tolist()))
    assert len(got) == len(set(got)) and set(got) == expected
    ids = rows["puzzle_identifiers"][v]
    assert (ids == identifier_starts(arrays.pool_count)[rows["task_index"][v]]
            + rows["aug_index"][v]).all()
    for i in np.flatnonzero(v):
        t, perm = rows["dihedral"][i], rows["colour_perm"][i]
        want_in, want_out = truth[names[rows["task_index"][i]]][rows["test_index"][i]]
        assert (augment.arc_inverse(rows["inputs"][i], t, perm) == want_in).all()
        label = np.where(rows["labels"][i] == -100, 0, rows["labels"][i])
        assert (augment.arc_inverse(label, t, perm) == want_out).all()
    assert (rows["inputs"][~v] == 0).all() and (rows["puzzle_identifiers"][~v] == 0).all()
    small = list(pipeline.eval_batches(dirs["arc"], global_batch_size=16, num_aug=0,
                                       shard_index=0, shard_count=1))
    assert sum(b["valid"].sum() for b in small) == 3


def test_grain_checkpoint_handler_roundtrip(dirs, tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    it = train(dirs["arc"])
    take(it, 2)
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data_iter",)) as mngr:
        mngr.save(2, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
        expected = take(it, 3)
        fresh = train(dirs["arc"])
        restore = grain.checkpoint.CheckpointRestore(fresh)
        mngr.restore(2, args=ocp.args.Composite(data_iter=restore))
    assert same(take(fresh, 3), expected)


def test_metadata_for_the_model_config(dirs):
    for kind, vocab, seq in (("sudoku", 11, 81), ("maze", 6, 36), ("arc", 12, 900)):
        meta = pipeline.load_metadata(dirs[kind])
        assert (meta.name, meta.vocab_size, meta.seq_len) == (kind, vocab, seq)
        assert (meta.pad_id, meta.ignore_label_id, meta.blank_identifier_id) == (0, -100, 0)
    assert pipeline.load_metadata(dirs["sudoku"]).num_puzzle_identifiers == 1
    with pytest.raises(DataError, match="not a built data set"):
        pipeline.load_metadata(dirs["sudoku"] / "train")
    assert list(itertools.islice(pipeline.task_ids(dirs["arc"]), 2)) == ["tr0", "tr1"]


@pytest.mark.parametrize("kind, file", [("sudoku", "test/labels.npy"), ("maze", "train/inputs.npy"),
                                        ("arc", "arc/grids.npy")])
def test_an_incomplete_or_damaged_data_set_is_named_when_its_metadata_is_read(dirs, kind, file,
                                                                              tmp_path):
    """A missing or truncated array file stops a run before its first step (it used to fail at
    the first evaluation, or as a bare `mmap length is greater than file size`)."""
    copy = tmp_path / kind
    shutil.copytree(dirs[kind], copy)
    data = (copy / file).read_bytes()
    (copy / file).write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=f"{copy / file}: damaged .*; rebuild the data set"):
        pipeline.load_metadata(copy, "test")
    (copy / file).unlink()
    with pytest.raises(DataError, match=f"{copy / file}: missing, the data set is incomplete"):
        pipeline.load_metadata(copy)
    if kind != "arc":
        tokens = np.load(dirs[kind] / file)
        np.save(copy / file, np.where(np.arange(tokens.size).reshape(tokens.shape) == 7, 200,
                                      tokens).astype(tokens.dtype))
        with pytest.raises(DataError, match=f"{copy / file} holds token 200, outside the data "
                                            "set's vocab_size"):
            pipeline.load_metadata(copy)
    np.save(copy / file, np.load(dirs[kind] / file)[:-1])  # whole, but one row short
    with pytest.raises(DataError, match=r"(not two .* of one shape|of different lengths).*"
                                         r"rebuild the data set"):
        pipeline.load_metadata(copy)
