"""ARC voting, pass@K and the Kaggle submission: synthetic predictions with known answers
(ties, duplicates, confidence order, padding rows, missing predictions), the inverse
augmentation path through real eval batches, and the ARC evaluator in the training loop."""

from __future__ import annotations

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config, tiny_model
from test_data_fixtures import built_arc

from data.augment import arc_augment, encode_grid
from data.pipeline import arc_pairs, load_metadata
from trm.arc_eval import ArcVoter, validate_submission, write_submission
from trm.eval_run import evaluate_split
from trm.evaluation import Rollout
from trm.loop import evaluate
from trm.run_config import EvalConfig, RunConfig
from trm.train_step import make_mesh


def grid(*rows: str) -> np.ndarray:
    return np.array([[int(c) for c in r] for r in rows], np.int64)


S_A0, S_A1, S_B, S_D = grid("12", "34"), grid("5"), grid("777", "000"), grid("9", "9")
PAIRS = {"a": [(grid("1"), S_A0), (grid("2"), S_A1)], "b": [(grid("3"), S_B)],
         "c": [(grid("4"), grid("4"))], "d": [(grid("5"), S_D)]}


def wrong(n: int) -> np.ndarray:
    return np.full((1, n + 2), 8)


def filled(v: ArcVoter) -> ArcVoter:
    """The predictions below for PAIRS' tasks, added to `v`."""
    for q in (0.0, 0.0, 0.0):
        v.add("a", 0, S_A0, q)                 # duplicates: 3 votes for the solution
    for q in (5.0, 5.0):
        v.add("a", 0, wrong(0), q)             # 2 confident votes lose to 3 votes
    v.add("a", 1, wrong(1), 2.0)               # exact tie (1 vote, same q): first seen wins
    v.add("a", 1, S_A1, 2.0)
    v.add("a", 1, wrong(2), -1.0)
    for k in range(6):                         # b: six wrong grids with 2 votes, solution 1
        v.add("b", 0, wrong(10 + k), 0.0)
        v.add("b", 0, wrong(10 + k), 0.0)
    v.add("b", 0, S_B, 9.0)
    # c: no predictions at all.  d: mean sigmoid(q) ranks, not the mean logit:
    # solution q (4, -2): mean sigmoid 0.55, mean logit 1.0; wrong q (0.5, 0.5): 0.62, 0.5.
    v.add("d", 0, S_D, 4.0)
    v.add("d", 0, S_D, -2.0)
    v.add("d", 0, wrong(3), 0.5)
    v.add("d", 0, wrong(3), 0.5)
    return v


@pytest.fixture
def voter() -> ArcVoter:
    return filled(ArcVoter(PAIRS))


def test_pass_at_k_with_ties_duplicates_and_missing(voter):
    assert [voter.solved_rank(t, i) for t, i in
            (("a", 0), ("a", 1), ("b", 0), ("c", 0), ("d", 0))] == [0, 1, 6, None, 1]
    expected = {1: (0.5 + 0 + 0 + 0) / 4, 2: (1 + 0 + 0 + 1) / 4, 5: 2 / 4, 10: 3 / 4,
                100: 3 / 4, 1000: 3 / 4}
    assert voter.pass_at_k() == {f"pass@{k}": v for k, v in expected.items()}
    top = voter.ranked("a", 0)[0]
    assert top.votes == 3 and top.confidence == pytest.approx(0.5)
    summary = voter.summary()
    assert (summary["tasks"], summary["test_inputs"],
            summary["test_inputs_without_predictions"]) == (4, 5, 1)


def test_tasks_with_unknown_outputs_are_left_out_of_pass_at_k(voter):
    """A task whose test output is unknown (0 x 0, a test subset built without solutions) is
    not scored, though predicted; with no scored task, pass@K is absent."""
    unknown = np.zeros((0, 0), np.int64)
    v = filled(ArcVoter({**PAIRS, "e": [(grid("6"), unknown)]}))
    v.add("e", 0, grid("6"), 0.0)
    assert v.pass_at_k() == voter.pass_at_k()
    assert v.summary()["tasks_unscored"] == 1 and v.submission()["e"][0]["attempt_1"] == [[6]]
    alone = ArcVoter({"e": [(grid("6"), unknown)]})
    alone.add("e", 0, grid("6"), 0.0)
    assert "pass@2" not in alone.summary() and alone.summary()["tasks_unscored"] == 1


def test_submission_follows_the_kaggle_schema(voter, tmp_path):
    sub = voter.submission()
    validate_submission(sub, {t: len(p) for t, p in PAIRS.items()})
    assert sub["a"][0] == {"attempt_1": [[1, 2], [3, 4]], "attempt_2": [[8, 8]]}
    assert sub["a"][1]["attempt_2"] == [[5]]                  # the tie's second candidate
    assert sub["c"] == [{"attempt_1": [[0]], "attempt_2": [[0]]}]   # missing predictions
    one = ArcVoter({"x": [(grid("1"), grid("2"))]})
    one.add("x", 0, grid("3"), 0.0)
    assert one.submission()["x"] == [{"attempt_1": [[3]], "attempt_2": [[3]]}]  # padded
    write_submission(tmp_path / "submission.json", sub)
    loaded = json.loads((tmp_path / "submission.json").read_text())
    assert loaded == sub and all(type(v) is int for v in loaded["b"][0]["attempt_1"][0])


@pytest.mark.parametrize("bad", [
    {"a": [{"attempt_1": [[1]]}]},                                   # attempt_2 missing
    {"a": [{"attempt_1": [[1]], "attempt_2": [[10]]}]},              # colour out of range
    {"a": [{"attempt_1": [[1, 2], [3]], "attempt_2": [[1]]}]},       # ragged
    {"a": [{"attempt_1": [], "attempt_2": [[1]]}]},                  # empty grid
    {"a": []},                                                       # entry missing
    {"b": [{"attempt_1": [[1]], "attempt_2": [[1]]}]},               # wrong task
    {"a": [{"attempt_1": [[True]], "attempt_2": [[1]]}]},            # not an int
])
def test_validator_rejects_malformed_submissions(bad):
    with pytest.raises(ValueError):
        validate_submission(bad, {"a": 1})


def test_identical_test_inputs_share_one_pool():
    v = ArcVoter({"e": [(grid("11"), grid("2")), (grid("11"), grid("2"))]})
    v.add("e", 0, grid("2"), 0.0)
    assert v.solved_rank("e", 1) == 0 and v.pass_at_k((1,)) == {"pass@1": 1.0}


def test_batches_are_mapped_back_through_the_augmentation():
    solution = grid("123", "405")
    v = ArcVoter({"t": [(grid("0"), solution)]}, task_names=["t"])
    rng = np.random.default_rng(0)
    rows, dihedral, perms = [], [], []
    for t in range(8):
        perm = np.concatenate([[0], rng.permutation(9) + 1])
        rows.append(encode_grid(arc_augment(solution, t, perm)))
        dihedral.append(t)
        perms.append(perm)
    rows.append(encode_grid(grid("9")))                   # a wrong prediction
    rows.append(encode_grid(solution))                    # padding row: must be ignored
    n = len(rows)
    valid = np.arange(n) < n - 1
    batch = {"valid": valid, "task_index": np.zeros(n, np.int32),
             "test_index": np.zeros(n, np.int32),
             "dihedral": np.array(dihedral + [0, 0], np.int32),
             "colour_perm": np.array(perms + [np.arange(10)] * 2, np.int32)}
    v.add_batch(batch, np.stack(rows), np.zeros(n, np.float32))
    ranked = v.ranked("t", 0)
    assert [c.votes for c in ranked] == [8, 1]
    np.testing.assert_array_equal(ranked[0].grid, solution)


@eqx.filter_jit
def oracle_rollout(model, inputs, labels, puzzle_identifiers, keep_step_preds=False):
    """Predicts every label exactly (a perfect model) at every step."""
    steps, b = model.config.halt_max_steps, inputs.shape[0]
    preds = jnp.where(labels == -100, 0, labels)
    return Rollout(rows={"accuracy": jnp.ones(b)}, preds=preds,
                   q_halt=jnp.zeros((steps, b)), halt_margin=jnp.zeros((steps, b)),
                   exact=jnp.ones((steps, b), bool),
                   labelled=(labels != -100).any(-1))


@pytest.fixture(scope="module")
def arc_dir(tmp_path_factory):
    return built_arc(tmp_path_factory.mktemp("arc"), num_aug=6)


def arc_model(arc_dir):
    meta = load_metadata(arc_dir)
    return tiny_model(tiny_config(vocab_size=12, seq_len=900, num_puzzle_identifiers=meta.
                                  num_puzzle_identifiers, L_layers=1, H_cycles=1, L_cycles=1,
                                  num_heads=2, halt_max_steps=2))  # 900 tokens: keep it cheap


def test_perfect_predictions_through_the_pipeline_pass_at_1(arc_dir):
    result = evaluate_split(arc_model(arc_dir), arc_dir, "test", make_mesh(), batch_size=16,
                            rollout_fn=oracle_rollout)
    pairs = arc_pairs(arc_dir)
    assert result.arc["pass@1"] == 1.0 and result.arc["tasks"] == len(pairs)
    meta = load_metadata(arc_dir, "test")
    assert result.puzzles == meta.examples_per_epoch        # every augmented copy, no padding
    validate_submission(result.submission, {t: len(p) for t, p in pairs.items()})
    assert result.submission["ev0"][1]["attempt_1"] == pairs["ev0"][1][1].tolist()


def test_arc_evaluator_in_the_training_loop(arc_dir, tmp_path):
    cfg = RunConfig(eval=EvalConfig(evaluators=("arc",), batch_size=16), run_dir=str(tmp_path))
    results = evaluate(arc_model(arc_dir), arc_dir, cfg, make_mesh())
    test = results["test"]
    assert {"pass@1", "pass@2", "pass@1000", "exact_accuracy"} <= set(test)
    assert 0.0 <= test["pass@1"] <= test["pass@2"] <= test["pass@1000"] <= 1.0
    sub = json.loads((tmp_path / "arc_submission_test.json").read_text())
    validate_submission(sub, {t: len(p) for t, p in arc_pairs(arc_dir).items()})
    plain = evaluate(arc_model(arc_dir), arc_dir, RunConfig(eval=EvalConfig(batch_size=16)),
                     make_mesh())
    assert "pass@1" not in plain["test"]
    assert jax.device_count() == 8  # the evaluation ran data-parallel on the 8-device mesh


@pytest.mark.parametrize("given", [(), ("te0",)])
def test_a_test_split_without_solutions_is_predicted_not_scored(tmp_path, given):
    """Built from a test subset without solutions (ARC Prize's hidden set): every copy is
    predicted and voted into a full submission; nothing is measured (the results hold only
    count 0, no curves, no pass@K) and the summary says so. When the challenges file gives
    some test outputs (`given` tasks), those alone are scored, and pass@K says over which
    tasks."""
    import json

    from test_data_fixtures import arc_task, write_arc

    from data.build import build_arc
    from trm.eval_run import summary_lines
    from trm.render import plot_per_step

    rng = np.random.default_rng(0)
    raw = write_arc(tmp_path / "raw", {"training": {"tr": arc_task(rng, 2, 1)},
                                       "test": {"te0": arc_task(rng, 2, 2),
                                                "te1": arc_task(rng, 2, 1)}})
    solutions = json.loads((raw / "arc-agi_test_solutions.json").read_text())
    challenges = json.loads((raw / "arc-agi_test_challenges.json").read_text())
    for task in given:
        for example, output in zip(challenges[task]["test"], solutions[task]):
            example["output"] = output
    (raw / "arc-agi_test_challenges.json").write_text(json.dumps(challenges))
    (raw / "arc-agi_test_solutions.json").unlink()
    build_arc(raw, ["training", "test"], "test", tmp_path / "arc", num_aug=2, progress=False)
    arc_dir = tmp_path / "arc"
    result = evaluate_split(arc_model(arc_dir), arc_dir, "test", make_mesh(), batch_size=8)
    copies = load_metadata(arc_dir, "test").examples_per_epoch
    assert result.puzzles == copies
    validate_submission(result.submission, {"te0": 2, "te1": 1})
    assert result.arc["tasks_unscored"] == 2 - len(given)
    assert result.arc["test_inputs_without_predictions"] == 0
    lines = summary_lines({"test": result})
    if not given:
        assert result.metrics == {"count": 0.0} and result.per_step == {}
        assert not any(k.startswith("pass@") for k in result.arc)
        (line,) = lines
        assert line.startswith(f"test: no known outputs to score ({copies} predictions, ")
        assert line.endswith(" puzzles/s); the submission holds the voted answers")
        plot_per_step(tmp_path / "p.png", {"test": result.per_step})
        assert (tmp_path / "p.png").stat().st_size > 0
    else:
        assert 0 < result.metrics["count"] < copies and "pass@2" in result.arc
        assert lines[-1].endswith("(over 1 of 2 tasks: 1 have unknown test outputs)")
