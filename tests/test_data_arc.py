"""ARC: JSON validation, the official split, the deduplicated augmentation pool and the
(task, copy) <-> identifier map, on small synthetic tasks written by the tests."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_data_fixtures import arc_task, small_arc, write_arc

from data import arc, augment, build
from data.common import DataError
from data.store import load_metadata, read_arc


def augmented_key(task: arc.ArcTask, t: int, perm: np.ndarray) -> list[tuple[bytes, ...]]:
    """The augmented task as a sorted list of its pairs (shape + bytes), independently."""
    def enc(g: np.ndarray) -> tuple:
        a = augment.arc_augment(g, t, perm)
        return a.shape, a.tobytes()
    return sorted((enc(i), enc(o)) for i, o in task.train + task.test)


def test_reader_merges_solutions_and_keeps_order(tmp_path):
    small_arc(tmp_path)
    tasks = arc.read_arc(tmp_path, ["training", "evaluation"])
    assert [t.id for t in tasks] == ["tr0", "tr1", "tr2", "two_colour", "blank", "ev0", "ev1"]
    raw = json.loads((tmp_path / "arc-agi_evaluation_solutions.json").read_text())
    ev0 = tasks[5]
    assert len(ev0.test) == 2 and ev0.subset == "evaluation"
    assert (ev0.test[1][1] == np.array(raw["ev0"][1])).all()
    assert ev0.train[0][0].dtype == np.uint8


def test_build_uses_the_official_split(tmp_path):
    small_arc(tmp_path / "raw")
    build.build_arc(tmp_path / "raw", ["training", "evaluation"], "evaluation", tmp_path / "out",
                    num_aug=3, progress=False)
    arrays, tasks = read_arc(tmp_path / "out")
    names = [t for t, _ in tasks]
    test_rows = np.flatnonzero(arrays.split == 1)
    assert [names[t] for t in arrays.task[test_rows]] == ["ev0", "ev0", "ev1"]
    assert arrays.index[test_rows].tolist() == [0, 1, 0]
    per_task = np.bincount(arrays.task[arrays.split == 0], minlength=len(names))
    # training tasks: demos + test pairs; evaluation tasks: demos only
    assert per_task.tolist() == [3, 4, 3, 2, 2, 3, 2]
    raw = arc.read_arc(tmp_path / "raw", ["training", "evaluation"])
    r = test_rows[1]
    (h, w) = arrays.shapes[r, 1]
    assert (arrays.grids[r, 1, :h, :w] == raw[5].test[1][1]).all()
    meta, test_meta = load_metadata(tmp_path / "out"), load_metadata(tmp_path / "out", "test")
    counts = arrays.pool_count
    assert meta.num_puzzle_identifiers == 1 + counts.sum()
    assert (meta.vocab_size, meta.seq_len) == (12, 900)
    assert meta.total_groups == 7 and test_meta.total_groups == 2
    assert meta.mean_puzzle_examples == pytest.approx((counts * per_task).sum() / counts.sum())
    assert test_meta.examples_per_epoch == counts[5] * 2 + counts[6] * 1


def test_pool_copies_are_distinct_and_deduplicated(tmp_path):
    small_arc(tmp_path)
    tasks = arc.read_arc(tmp_path, ["training", "evaluation"])
    pool = arc.build_pool(tasks, 40, seed=0, progress=False)
    by_id = {t.id: i for i, t in enumerate(tasks)}
    for i, task in enumerate(tasks):
        n = pool.count[i]
        assert pool.dihedral[i, 0] == 0 and (pool.colours[i, 0] == np.arange(10)).all()
        assert (pool.colours[i, :n, 0] == 0).all()
        keys = [augmented_key(task, int(pool.dihedral[i, k]), pool.colours[i, k])
                for k in range(n)]
        assert len({repr(k) for k in keys}) == n                   # all copies distinct
    assert pool.count[by_id["tr0"]] == 41
    assert pool.count[by_id["blank"]] == 1                         # every augmentation == original
    # two colours (0, 3): at most 8 transforms x 9 targets for colour 3; count them directly
    two = tasks[by_id["two_colour"]]
    distinct = {repr(augmented_key(two, t, np.array([0, 1, 2, c, 4, 5, 6, 7, 8, 9])))
                for t in range(8) for c in range(1, 10)}
    small = arc.build_pool([two], 200, seed=0, progress=False)
    assert small.count[0] == len(distinct) <= 72


def test_pool_is_seeded_per_task(tmp_path):
    small_arc(tmp_path)
    tasks = arc.read_arc(tmp_path, ["training"])
    a = arc.build_pool(tasks, 5, seed=0, progress=False)
    b = arc.build_pool(tasks[1:], 5, seed=0, progress=False)    # independent of other tasks
    c = arc.build_pool(tasks, 5, seed=1, progress=False)
    assert (a.colours[1:] == b.colours).all() and (a.dihedral[1:] == b.dihedral).all()
    assert not (a.colours == c.colours).all()


def test_identifiers_are_unique_and_decode_back():
    count = np.array([3, 1, 5, 2])
    starts = arc.identifier_starts(count)
    ids = np.concatenate([starts[t] + np.arange(c) for t, c in enumerate(count)])
    assert ids.tolist() == list(range(1, 1 + count.sum()))       # 0 stays the blank id
    task, copy = arc.decode_identifiers(starts, ids)
    assert task.tolist() == [0, 0, 0, 1, 2, 2, 2, 2, 2, 3, 3]
    assert copy.tolist() == [0, 1, 2, 0, 0, 1, 2, 3, 4, 0, 1]


def _one_task(tmp_path, task: dict, solutions=None):
    write_arc(tmp_path, {"training": {"t1": task}})
    if solutions is not None:
        (tmp_path / "arc-agi_training_solutions.json").write_text(json.dumps(solutions))
    return tmp_path


GOOD = {"train": [{"input": [[1, 2]], "output": [[3]]}],
        "test": [{"input": [[0]], "output": [[1]]}]}


@pytest.mark.parametrize("task, message", [
    ({**GOOD, "train": [{"input": [[1, 2], [3]], "output": [[3]]}]},
     "train\\[0\\].input: ragged grid"),
    ({**GOOD, "train": [{"input": [[0] * 31], "output": [[3]]}]}, "grid is 1x31, must be"),
    ({**GOOD, "train": [{"input": [[1, 10]], "output": [[3]]}]}, "colour 10 outside 0..9"),
    ({**GOOD, "train": [{"input": [[1, -1]], "output": [[3]]}]}, "colour -1 outside"),
    ({**GOOD, "train": [{"input": [["a"]], "output": [[3]]}]}, "colour 'a' outside"),
    ({**GOOD, "train": [{"input": [], "output": [[3]]}]}, "non-empty list of rows"),
    ({**GOOD, "train": [{"input": [[1]]}]}, "train\\[0\\]: example has no 'output'"),
    ({"train": [], "test": []}, "must have non-empty 'train'"),
    ({**GOOD, "test": []}, "must have non-empty 'train' and 'test' lists"),
])
def test_bad_tasks(tmp_path, task, message):
    _one_task(tmp_path, task)
    with pytest.raises(DataError, match=message) as e:
        arc.read_subset(tmp_path, "training")
    assert "arc-agi_training_challenges.json, task t1" in str(e.value)


def test_bad_solutions_and_subsets(tmp_path):
    _one_task(tmp_path, GOOD, solutions={"t1": []})
    with pytest.raises(DataError, match="task t1: expected 1 solution grid \\(one per test "
                                        "input\\), got 0"):
        arc.read_subset(tmp_path, "training")
    _one_task(tmp_path, GOOD, solutions={"t1": {"output": [[1]]}})
    with pytest.raises(DataError, match="one per test input\\), got a JSON object$"):
        arc.read_subset(tmp_path, "training")
    _one_task(tmp_path, GOOD, solutions={"t1": [[[2]]]})
    (tmp_path / "arc-agi_training_challenges.json").write_text(json.dumps({"t1": GOOD}))
    with pytest.raises(DataError, match="task t1, test\\[0\\].output differs from .*"
                                        "solutions.json, task t1, solution\\[0\\]"):
        arc.read_subset(tmp_path, "training")
    (tmp_path / "arc-agi_training_solutions.json").write_text(json.dumps({"t1": [[[1]]]}))
    (task,) = arc.read_subset(tmp_path, "training")  # a test output the files agree on
    assert task.test[0][1].tolist() == [[1]]
    for name in ("challenges", "solutions"):  # saved by an editor that writes a UTF-8 BOM
        path = tmp_path / f"arc-agi_training_{name}.json"
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    (task,) = arc.read_subset(tmp_path, "training")
    assert task.test[0][1].tolist() == [[1]]
    _one_task(tmp_path, GOOD, solutions={"t1": [[[1]]], "zz": [[[1]]]})
    with pytest.raises(DataError, match="solutions.json: task zz has solutions but is not in "
                                        "arc-agi_training_challenges.json"):
        arc.read_subset(tmp_path, "training")
    _one_task(tmp_path, GOOD, solutions={"t1": [[[1, 11]]]})
    with pytest.raises(DataError, match="solutions.json, task t1, solution\\[0\\]: colour 11"):
        arc.read_subset(tmp_path, "training")                  # named in the file it is in
    (tmp_path / "arc-agi_training_solutions.json").unlink()
    with pytest.raises(DataError, match="solutions file not found"):
        arc.read_subset(tmp_path, "training")
    with pytest.raises(DataError, match="unknown ARC subset 'trainig'"):
        arc.read_subset(tmp_path, "trainig")
    with pytest.raises(DataError, match="challenges.json: file not found"):
        arc.read_subset(tmp_path, "evaluation")
    (tmp_path / "arc-agi_concept_challenges.json").write_text("{oops")
    with pytest.raises(DataError, match="not valid JSON"):
        arc.read_subset(tmp_path, "concept")


def test_build_arc_rejects_bad_requests_and_writes_nothing(tmp_path):
    rng = np.random.default_rng(0)
    write_arc(tmp_path / "raw", {"training": {"a": arc_task(rng, 2, 1)},
                                 "evaluation": {"a": arc_task(rng, 2, 1)}})
    out = tmp_path / "out"
    with pytest.raises(DataError, match="task a appears in both subsets 'training' and 'eval"):
        build.build_arc(tmp_path / "raw", ["training", "evaluation"], "evaluation", out)
    with pytest.raises(DataError, match="ARC subset 'training' given more than once"):
        build.build_arc(tmp_path / "raw", ["training", "training"], "training", out)
    with pytest.raises(DataError, match="test subset 'concept' is not among"):
        build.build_arc(tmp_path / "raw", ["training"], "concept", out)
    with pytest.raises(DataError, match="unknown ARC subset 'evaluation3'"):
        build.build_arc(tmp_path / "raw", ["training"], "evaluation3", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_leak_report_finds_a_test_pair_among_training_rows(tmp_path):
    rng = np.random.default_rng(4)
    ev = {"ev0": arc_task(rng, 2, 2), "ev1": arc_task(rng, 2, 1)}
    tr = {"tr0": arc_task(rng, 2, 1)}
    raw = write_arc(tmp_path / "clean", {"training": tr, "evaluation": ev})
    meta = build.build_arc(raw, ["training", "evaluation"], "evaluation", tmp_path / "a",
                           num_aug=1, progress=False, strict=True)
    assert meta["leaks"] == {"test_in_train": 0, "test": 3,
                             "equivalence": "same input and output grids"}
    tr["tr0"]["train"].append(ev["ev0"]["test"][1])               # a test pair, as a demo
    same_input = {"input": ev["ev1"]["test"][0]["input"], "output": [[1]]}
    ev["ev0"]["train"].append(same_input)                       # same input, other output
    raw = write_arc(tmp_path / "leaky", {"training": tr, "evaluation": ev})
    meta = build.build_arc(raw, ["training", "evaluation"], "evaluation", tmp_path / "b",
                           num_aug=1, progress=False)
    assert meta["leaks"]["test_in_train"] == 1
    assert json.loads((tmp_path / "b" / "metadata.json").read_text())["leaks"] == meta["leaks"]
    with pytest.raises(DataError, match="1 of 3 test puzzles equal a training puzzle"):
        build.build_arc(raw, ["training", "evaluation"], "evaluation", tmp_path / "c",
                        num_aug=1, progress=False, strict=True)
    assert not (tmp_path / "c").exists()


def test_a_test_subset_without_solutions_builds_with_unknown_outputs(tmp_path):
    """ARC Prize's arc-agi_test_challenges.json has no solutions file: its test outputs are
    unknown (0 x 0), never trained on, and every evaluation label is ignored; a training
    subset without one is refused. The train split is the one built with the solutions."""
    from data.pipeline import eval_batches, train_dataset

    rng = np.random.default_rng(3)
    subsets = {"training": {f"tr{i}": arc_task(rng, 2, 1) for i in range(3)},
               "test": {"te0": arc_task(rng, 2, 2), "te1": arc_task(rng, 3, 1)}}
    write_arc(tmp_path / "known", subsets)
    write_arc(tmp_path / "kaggle", subsets)
    (tmp_path / "kaggle" / "arc-agi_test_solutions.json").unlink()
    for name in ("known", "kaggle"):
        build.build_arc(tmp_path / name, ["training", "test"], "test", tmp_path / f"{name}_out",
                        num_aug=0, progress=False)
    known, kaggle = (read_arc(tmp_path / f"{n}_out")[0] for n in ("known", "kaggle"))
    test = kaggle.split == 1
    assert (kaggle.shapes[test, 1] == 0).all() and (kaggle.shapes[~test, 1] > 0).all()
    assert (kaggle.shapes[:, 0] == known.shapes[:, 0]).all()
    doc = json.loads((tmp_path / "kaggle_out" / "metadata.json").read_text())
    assert doc["build"]["unknown_test_outputs"] == doc["build"]["test_pairs"] == 3
    assert doc["leaks"]["test"] == 0  # an unknown output is not checked (it cannot leak)
    for a, b in zip(*(train_dataset(tmp_path / f"{n}_out", global_batch_size=4, seed=0)
                      for n in ("known", "kaggle"))):
        assert all((a[k] == b[k]).all() for k in a)
        break
    (batch,) = eval_batches(tmp_path / "kaggle_out", global_batch_size=3)
    (truth,) = eval_batches(tmp_path / "known_out", global_batch_size=3)
    assert (batch["labels"] == -100).all() and (truth["labels"] != -100).any()
    assert (batch["inputs"] == truth["inputs"]).all()
    with pytest.raises(DataError, match="test_solutions.json: solutions file not found \\(needed "
                                        "for subset 'test', which trains; only the test "
                                        "subset may come without one\\)"):
        build.build_arc(tmp_path / "kaggle", ["training", "test"], "training",
                        tmp_path / "refused", num_aug=0, progress=False)
    assert not (tmp_path / "refused").exists()


def test_official_rng_gives_the_official_builder_s_puzzle_identifiers(tmp_path):
    """--official-rng: task order and augmentation pool from the official builder's random
    stream, so every identifier names the (task, dihedral, colour map) the official
    identifiers.json does (fixture: the official builder on these synthetic tasks)."""
    from helpers import FIXTURES
    from test_data_fixtures import three_subset_arc

    raw = three_subset_arc(tmp_path / "raw")
    build.build_arc(raw, ["training", "evaluation", "concept"], "evaluation", tmp_path / "out",
                    num_aug=16, seed=42, progress=False, official_rng=True)
    arrays, tasks = read_arc(tmp_path / "out")
    names = ["<blank>"]
    for t, (task_id, _) in enumerate(tasks):
        names.append(task_id)
        for k in range(1, arrays.pool_count[t]):
            colours = "".join(str(c) for c in arrays.pool_colours[t, k])
            names.append(f"{task_id}|||t{arrays.pool_dihedral[t, k]}|||{colours}")
    official = json.loads((FIXTURES / "official_arc_identifiers.json").read_text())
    assert len(names) == len(official) == 342 and names == official
    assert json.loads((tmp_path / "out" / "metadata.json").read_text())["build"]["official_rng"]
