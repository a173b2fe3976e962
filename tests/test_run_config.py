"""Run configs: every preset parses, overrides round-trip, validation, documented fields."""

import ast
import dataclasses
import inspect
import itertools

import pytest

from trm import run_config as rc
from trm.config import ConfigError
from trm.presets import PRESETS
from trm.run_config import RunConfig, parse_cli

SECTIONS = (rc.OptimConfig, rc.EvalConfig, rc.CheckpointConfig, rc.TrackingConfig,
            rc.MeshConfig, rc.DataConfig, rc.CurriculumConfig, rc.HaltingConfig, rc.RunConfig)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_parses_to_itself(name):
    assert parse_cli([name]) == PRESETS[name][1]


def test_overrides_round_trip():
    cfg = parse_cli(["sudoku-tiny", "--model.hidden-size", "128", "--optim.lr", "3e-4",
                     "--no-track", "--eval.eval-sets", "test", "train", "--optim.no-ema",
                     "--checkpoint.keep-best-metric", "test/exact_accuracy",
                     "--model.pos-encodings", "learned", "--max-steps", "7"])
    base = PRESETS["sudoku-tiny"][1]
    expected = dataclasses.replace(
        base, max_steps=7,
        model=dataclasses.replace(base.model, hidden_size=128, pos_encodings="learned"),
        optim=dataclasses.replace(base.optim, lr=3e-4, ema=False),
        eval=dataclasses.replace(base.eval, eval_sets=("test", "train")),
        checkpoint=dataclasses.replace(base.checkpoint, keep_best_metric="test/exact_accuracy"),
        tracking=dataclasses.replace(base.tracking, track=False))
    assert cfg == expected


def test_paper_recipes():
    sudoku = PRESETS["sudoku-extreme"][1]
    assert (sudoku.model.mlp_t, sudoku.model.pos_encodings) == (True, "none")
    assert (sudoku.model.H_cycles, sudoku.model.L_cycles, sudoku.model.L_layers) == (3, 6, 2)
    assert (sudoku.optim.lr, sudoku.optim.puzzle_emb_lr) == (1e-4, 1e-4)
    assert (sudoku.optim.weight_decay, sudoku.optim.puzzle_emb_weight_decay) == (1.0, 1.0)
    assert (sudoku.optim.epochs, sudoku.eval.eval_interval) == (50000, 5000)
    assert PRESETS["sudoku-extreme-attn"][1].model.pos_encodings == "rope"
    maze = PRESETS["maze-hard"][1]
    assert (maze.model.L_cycles, maze.optim.weight_decay, maze.model.seq_len) == (4, 1.0, 900)
    for name in ("arc-agi-1", "arc-agi-2"):
        arc = PRESETS[name][1]
        assert (arc.model.L_cycles, arc.optim.puzzle_emb_lr, arc.optim.weight_decay) == (
            4, 1e-2, 0.1)
        assert (arc.optim.epochs, arc.eval.evaluators) == (100000, ("arc",))
    for _, cfg in PRESETS.values():
        assert cfg.optim.ema and cfg.optim.optimizer == "adam_atan2"
        assert cfg.model.halt_max_steps <= 16 and cfg.optim.b2 == 0.95
    for name in ("sudoku-tiny", "maze-tiny"):
        tiny = PRESETS[name][1]
        assert tiny.model.hidden_size <= 128 and tiny.data.generate == name


@pytest.mark.parametrize("make, message", [
    (lambda: RunConfig(optim=rc.OptimConfig(global_batch_size=30), mesh=rc.MeshConfig(data=8)),
     "not divisible"),
    (lambda: RunConfig(optim=rc.OptimConfig(epochs=10), eval=rc.EvalConfig(eval_interval=3)),
     "must divide epochs"),
    (lambda: rc.OptimConfig(ema_rate=1.0), "ema_rate"),
    (lambda: rc.OptimConfig(lr_min_ratio=2.0), "lr_min_ratio"),
    (lambda: rc.MeshConfig(data=0), "data must be -1 or >= 1"),
    (lambda: rc.OptimConfig(lr=float("inf")), "lr must be a finite number >= 0.0, got inf$"),
    (lambda: rc.OptimConfig(weight_decay=-1.0), "weight_decay must be >= 0.0, got -1.0$"),
])
def test_validation_errors(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_cli_reports_invalid_values():
    with pytest.raises(ConfigError, match="not divisible"):
        parse_cli(["sudoku-tiny", "--optim.global-batch-size", "30", "--mesh.data", "8"])


@pytest.mark.parametrize(("flags", "metric"), [
    (["sudoku-extreme"], "test/exact_accuracy"), (["maze-tiny"], "test/exact_accuracy"),
    (["arc-agi-2"], "test/pass@2"), (["arc-agi-1", "--eval.evaluators"], "test/exact_accuracy"),
    (["sudoku-tiny", "--eval.eval-sets", "train"], "train/exact_accuracy"),
    (["sudoku-tiny", "--eval.eval-sets"], None),
    (["sudoku-tiny", "--checkpoint.keep-best-metric", "None"], None),
    (["sudoku-tiny", "--checkpoint.keep-best-metric", "test/lm_loss", "--checkpoint.best-mode",
      "min"], "test/lm_loss")])
def test_presets_keep_the_best_step_by_the_metric_of_the_evaluated_sets(flags, metric):
    """"auto" (the presets) resolves to the paper's metric of what is evaluated, so a change of
    --eval.eval-sets or --eval.evaluators never leaves it naming a metric that is not there."""
    cfg = parse_cli(flags)
    assert cfg.best_metric == metric


@pytest.mark.parametrize("flags", [
    ["--model.num-heads", "0"], ["--model.num-heads", "-4"],
    ["--model.num-heads", "3"],  # does not divide hidden 64
    ["--model.hidden-size", "0"], ["--model.H-cycles", "0"], ["--model.L-cycles", "-1"],
    ["--model.L-layers", "0"], ["--model.halt-max-steps", "0"], ["--model.expansion", "0"],
    ["--model.puzzle-emb-len", "-1"], ["--model.rms-norm-eps", "0"], ["--model.H-layers", "-1"],
    ["--model.halt-exploration-prob", "1.5"],
    ["--optim.global-batch-size", "0"], ["--optim.lr", "-1"], ["--optim.lr", "nan"],
    ["--optim.lr", "inf"], ["--optim.puzzle-emb-lr", "-1e-2"], ["--optim.epochs", "0"],
    ["--optim.lr-warmup-steps", "-1"], ["--optim.b2", "1.0"], ["--optim.ema-rate", "1.0"],
    ["--optim.lr-reference-batch", "0"],
    ["--eval.eval-interval", "0"], ["--eval.eval-interval", "3"], ["--eval.batch-size", "0"],
    ["--eval.min-eval-interval", "-1"], ["--eval.average-last-k", "0"],
    ["--eval.average-last-k", "3"],  # > keep_last 2
    ["--eval.eval-sets", "val"], ["--checkpoint.keep-best-metric", "exact_accuracy"],
    ["--mesh.num-processes", "2"],  # without --mesh.distributed: it was ignored
    ["--checkpoint.keep-best-metric", "train/exact_accuracy"],  # train is not evaluated
    ["--checkpoint.every-n-steps", "0"], ["--checkpoint.keep-last", "0"],
    ["--mesh.data", "0"], ["--mesh.data", "-2"],
    ["--data.num-train", "0"], ["--data.num-test", "0"], ["--data.num-aug", "-1"],
    ["--data.num-workers", "-1"], ["--data.maze-size", "3"], ["--data.maze-size", "31"],
    ["--halting.exploration-start", "0.5"],
    ["--halting.step-penalty", "-1"], ["--curriculum.phases", "0.5", "1", "1"],
    ["--curriculum.phases", "0.0", "1", "2", "0.5", "2", "7", "--model.arch", "trm_hier6"],
    ["--model.puzzle-emb-ndim", "200", "--model.puzzle-emb-len", "1"],  # > 1 x hidden 64
    ["--model.seq-len", "80"], ["--model.vocab-size", "5"],  # the data set's
    ["--model.num-puzzle-identifiers", "9"],
    ["--max-steps", "0"], ["--run-dir", ""],
], ids=lambda f: " ".join(f))
def test_each_invalid_flag_is_named(flags):
    with pytest.raises(ConfigError) as e:
        parse_cli(["sudoku-tiny", *flags])
    assert str(e.value).startswith(flags[0] + " ") and "\n" not in str(e.value)


def test_a_data_set_field_is_refused_in_any_spelling():
    with pytest.raises(ConfigError, match="^--model.seq-len is the data set's"):
        parse_cli(["sudoku-tiny", "--model.seq_len", "80"])
    with pytest.raises(ConfigError, match="^--model.vocab-size is the data set's"):
        parse_cli(["sudoku-tiny", "--model.vocab-size=5"])
    for flags in (["--model.seq-len", "81"], ["--model.num_puzzle_identifiers=1"]):
        with pytest.raises(ConfigError, match="is the data set's"):  # the preset's value too:
            parse_cli(["sudoku-tiny", *flags])  # it would be ignored for the data set's
    assert parse_cli(["sudoku-tiny", "--model.hidden-size", "32"]).model.seq_len == 81


def test_an_error_names_the_other_fields_it_mentions_as_flags():
    with pytest.raises(ConfigError, match="^--model.num-heads 4 must divide "
                                          "--model.hidden-size 63 "):
        parse_cli(["sudoku-tiny", "--model.hidden-size", "63"])
    with pytest.raises(ConfigError, match="^--halting.exploration-start and "
                                          "--halting.exploration-end must be given together$"):
        parse_cli(["sudoku-tiny", "--halting.exploration-start", "0.5"])


def test_unknown_preset_suggests_the_closest():
    with pytest.raises(ConfigError, match="'sudoku-tinny'; did you mean sudoku-tiny or"):
        parse_cli(["sudoku-tinny"])
    with pytest.raises(ConfigError, match="did you mean maze-tiny or maze-hard"):
        parse_cli(["maze-tyni", "--no-track"])
    with pytest.raises(ConfigError, match=r"'zzz'; presets: sudoku-extreme, "):
        parse_cli(["zzz"])                                    # no suggestion, no dangling colon
    with pytest.raises(ConfigError, match=r"the preset comes first: train.py sudoku-tiny \[flags"):
        parse_cli(["--no-track", "sudoku-tiny"])


@pytest.mark.parametrize("cls", SECTIONS, ids=lambda c: c.__name__)
def test_every_field_has_a_docstring(cls):
    body = ast.parse(inspect.getsource(cls)).body[0].body
    documented = {stmt.target.id for stmt, nxt in itertools.pairwise(body)
                  if isinstance(stmt, ast.AnnAssign) and isinstance(nxt, ast.Expr)
                  and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)}
    sections = {"model", "optim", "eval", "checkpoint", "tracking", "mesh", "data",
                "curriculum", "halting"}
    missing = {f.name for f in dataclasses.fields(cls)} - documented - sections
    assert not missing


def test_checkpoint_dir_defaults_under_run_dir():
    assert RunConfig(run_dir="runs/x").checkpoint_dir == "runs/x/checkpoints"
    cfg = RunConfig(checkpoint=rc.CheckpointConfig(dir="/tmp/c"))
    assert cfg.checkpoint_dir == "/tmp/c"
