"""`python evaluate.py` on a checkpoint (EMA vs raw weights, JSON, PNG, Aim) and on official
weights, and its one-line errors."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import pytest
from helpers import FIXTURES, damage_step
from test_data_fixtures import built_sudoku

import evaluate as evaluate_cli
from data import fingerprint
from data.pipeline import load_metadata
from trm.checkpoint import Checkpointer
from trm.cli import parse_args
from trm.eval_run import EvalArgs, evaluate_split
from trm.eval_source import planned_batches
from trm.loop import model_config_for
from trm.models import TRM
from trm.optim import build_optimizer, build_schedules
from trm.run_config import CheckpointConfig, parse_cli
from trm.train_step import eval_model, init_train_state, make_mesh


def save_tiny_checkpoint(root: Path, data_dir: Path, step: int = 7):
    """A train.py-style checkpoint of an untrained tiny Sudoku model whose raw weights differ
    from their EMA. Returns (checkpoint dir, state)."""
    cfg = parse_cli(["sudoku-tiny", "--no-track", "--run-dir", str(root), "--data.data-dir",
                     str(data_dir), "--model.hidden-size", "32", "--model.num-heads", "2",
                     "--model.H-cycles", "1", "--model.L-cycles", "1",
                     "--model.halt-max-steps", "3", "--optim.global-batch-size", "8",
                     "--eval.batch-size", "8"])
    model_cfg = model_config_for(cfg.model, load_metadata(data_dir))
    lr, _ = build_schedules(cfg.optim, 10)
    state = init_train_state(TRM(model_cfg, key=jax.random.key(3)),
                             build_optimizer(cfg.optim, lr), 8, jax.random.key(4), ema=True)
    state = eqx.tree_at(lambda s: s.model.lm_head.weight, state, -2 * state.model.lm_head.weight)
    with Checkpointer(cfg.checkpoint_dir, CheckpointConfig(async_save=False), model_cfg,
                      cfg, data_fingerprint=fingerprint.read(data_dir)) as checkpointer:
        checkpointer.save(step, state, force=True)
    return Path(cfg.checkpoint_dir), state


@pytest.fixture(scope="module")
def sudoku_dir(tmp_path_factory):
    return built_sudoku(tmp_path_factory.mktemp("sudoku"), n_train=16, n_test=20)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, sudoku_dir):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("run"), sudoku_dir)


def test_cli_evaluates_ema_or_raw_weights_of_a_checkpoint(checkpoint, sudoku_dir, tmp_path,
                                                        capsys):
    aim = pytest.importorskip("aim")
    from aim.sdk.index_manager import RepoIndexManager

    ckpt, state = checkpoint
    out = tmp_path / "res.json"
    common = ["--checkpoint-dir", str(ckpt), "--no-progress", "--out"]
    assert evaluate_cli.main(common + [str(out), "--track", "--aim-repo",
                                       str(tmp_path / "aim")]) == 0
    assert capsys.readouterr().out.startswith(f"evaluated {ckpt} step 7 (ema weights)\n")
    doc = json.loads(out.read_text())
    assert doc["source"]["step"] == 7 and doc["source"]["weights"] == "ema"
    test = doc["sets"]["test"]
    assert test["puzzles"] == 20 and test["metrics"]["count"] == 20
    assert len(test["per_step"]["exact_accuracy_at_step"]) == 3
    png = (tmp_path / "res_per_step.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    expected = {"ema": eval_model(state), "raw": state.model}
    direct = {w: evaluate_split(m, sudoku_dir, "test", make_mesh(), batch_size=8).metrics
              for w, m in expected.items()}
    assert test["metrics"] == direct["ema"]
    assert evaluate_cli.main(common + [str(tmp_path / "raw.json"), "--raw-weights"]) == 0
    raw = json.loads((tmp_path / "raw.json").read_text())
    assert raw["source"]["weights"] == "raw" and raw["sets"]["test"]["metrics"] == direct["raw"]
    assert direct["raw"]["lm_loss"] != direct["ema"]["lm_loss"]

    repo = aim.Repo.from_path(str(tmp_path / "aim"))
    RepoIndexManager.get_index_manager(repo).index(doc["aim_run"])
    found = {m.name: m for m in repo.query_metrics(
        "metric.context.source == 'evaluate' and metric.context.set == 'test'").iter()}
    steps, (values, _, _) = found["exact_accuracy"].data.items_list()
    assert list(steps) == [7] and values[0] == test["metrics"]["exact_accuracy"]
    steps, (values, _, _) = found["exact_accuracy_at_step"].data.items_list()
    assert list(steps) == [1, 2, 3]


@pytest.mark.parametrize("name", ["trm_official_attn_rope.npz", "step_6"])
def test_cli_evaluates_official_weights(sudoku_dir, tmp_path, name):
    """An .npz is read as one by its contents, also under an official checkpoint's name."""
    fixture = tmp_path / name
    shutil.copy(FIXTURES / "trm_official_attn_rope.npz", fixture)
    out = tmp_path / "official.json"
    assert evaluate_cli.main(["--official-weights", str(fixture), "--data-dir",
                              str(sudoku_dir), "--batch-size", "8", "--no-progress",
                              "--halt-max-steps", "2", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["source"]["weights"] == "official" and doc["source"]["model"]["hidden_size"] == 64
    assert len(doc["sets"]["test"]["per_step"]["exact_accuracy_at_step"]) == 2


def test_official_config_without_data_set_sizes_takes_them_from_the_weights(sudoku_dir,
                                                                          tmp_path):
    """An all_config.yaml (no vocab_size / seq_len / num_puzzle_identifiers, as official runs
    write it; here HRM's own module name `hrm.hrm_act_v1`): the puzzle identifiers are the
    weights' 5 rows, not the data set's 1, and the vocabulary the weights' 11."""
    fixture = FIXTURES / "hrm_official_attn_rope.npz"
    with np.load(fixture) as f:
        fields = json.loads(str(f["config_json"]))["model"]
    arch = {k: v for k, v in fields.items()
            if k not in ("seq_len", "vocab_size", "num_puzzle_identifiers")}
    lines = ["arch:", "  name: hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1",
             "  loss: {name: losses@ACTLossHead, loss_type: stablemax_cross_entropy}",
             *(f"  {k}: {json.dumps(v)}" for k, v in arch.items())]
    config = tmp_path / "all_config.yaml"
    config.write_text("\n".join(lines) + "\n")
    out = tmp_path / "official.json"
    assert evaluate_cli.main(["--official-weights", str(fixture), "--official-config",
                              str(config), "--data-dir", str(sudoku_dir), "--batch-size", "8",
                              "--no-progress", "--out", str(out)]) == 0
    model = json.loads(out.read_text())["source"]["model"]
    assert (model["arch"], model["num_puzzle_identifiers"], model["vocab_size"]) == ("hrm", 5, 11)


@pytest.mark.parametrize("args, message", [
    (["--checkpoint-dir", "{tmp}/nowhere"], "no such checkpoint directory"),
    (["--checkpoint-dir", "{ckpt}/7"], ("is the folder of one step; give its parent and the "
                                        "step: --checkpoint-dir {ckpt} --step 7")),
    (["--checkpoint-dir", "{ckpt}/7/config/metadata"], "is a file; give a checkpoint dir"),
    (["--checkpoint-dir", "{ckpt}", "--step", "3"], "no step 3"),
    (["--checkpoint-dir", "{ckpt}", "--split", "validation"], "unknown split"),
    (["--checkpoint-dir", "{ckpt}", "--batch-size", "3"], "multiple of the 8 devices"),
    (["--checkpoint-dir", "{ckpt}", "--official-weights", "x.npz"], "exactly one"),
    (["--checkpoint-dir", "{ckpt}", "--official-config", "x.yaml"], "describes --official-w"),
    (["--official-weights", "{tmp}/w.pt", "--data-dir", "{data}"], "no such weights file"),
    (["--checkpoint-dir", "{ckpt}", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["--checkpoint-dir", "{ckpt}", "--mesh.data", "9"], "--mesh.data 9: 8 device(s) available"),
    (["--checkpoint-dir", "{ckpt}", "--mesh.data", "0"], "--mesh.data must be -1 or >= 1"),
    (["--checkpoint-dir", "{ckpt}", "--devices", "9"], "--mesh.data 9: 8 device(s) available"),
    (["--checkpoint-dir", "{ckpt}", "--devices", "0"], "--devices must be >= 1"),
    (["--checkpoint-dir", "{ckpt}", "--halt-max-steps", "0"], "--halt-max-steps must be"),
    (["--checkpoint-dir", "{ckpt}", "--step", "-1"], "--step must be >= 0"),
    (["--official-weights", "{fixture}", "--step", "3"], "--step and --raw-weights choose"),
    (["--official-weights", "{fixture}", "--raw-weights"], "--step and --raw-weights choose"),
])
def test_bad_input_is_one_line_and_writes_nothing(checkpoint, sudoku_dir, tmp_path, capsys,
                                                  args, message):
    fill = {"tmp": str(tmp_path), "ckpt": str(checkpoint[0]), "data": str(sudoku_dir),
            "fixture": str(FIXTURES / "trm_official_attn_rope.npz")}
    out = tmp_path / "res.json"
    rc = evaluate_cli.main([a.format(**fill) for a in args] + ["--out", str(out),
                                                               "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and message.format(**fill) in err
    assert "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_unreadable_official_files_and_an_output_under_a_file_are_one_line(
        checkpoint, sudoku_dir, tmp_path, capsys):
    """A truncated weights file, a config that does not parse, an output whose directory is a
    file: one `error:` line naming the file, nothing written."""
    fixture = FIXTURES / "trm_official_attn_rope.npz"
    (tmp_path / "bad").mkdir()
    truncated = tmp_path / "bad" / "weights.npz"
    truncated.write_bytes(fixture.read_bytes()[:3000])
    config = tmp_path / "bad" / "all_config.yaml"
    config.write_text("arch: {name: foo\n")
    (tmp_path / "bad" / "a_file").write_text("")
    arrays = dict(np.load(fixture))
    arrays["param/inner.lm_head.weight"] = np.full_like(arrays["param/inner.lm_head.weight"],
                                                        np.nan)
    not_finite = tmp_path / "bad" / "nan.npz"
    np.savez(not_finite, **arrays)
    official = ["--official-weights", str(fixture), "--data-dir", str(sudoku_dir)]
    for args, message in (
            (["--official-weights", str(not_finite), "--data-dir", str(sudoku_dir)],
             f"{not_finite}: the weights hold non-finite numbers"),
            (["--official-weights", str(truncated), "--official-config", str(fixture),
              "--data-dir", str(sudoku_dir)], f"{truncated}: not a readable state dict"),
            ([*official, "--official-config", str(config)], f"{config}: not a readable config"),
            ([*official, "--official-config", str(truncated)],
             f"{truncated}: not a readable config"),
            (["--checkpoint-dir", str(checkpoint[0]), "--plot",
              str(tmp_path / "bad" / "a_file" / "p.png")], "a_file is a file")):
        assert evaluate_cli.main([*args, "--out", str(tmp_path / "res.json"),
                                  "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]


@pytest.mark.parametrize("flag", ["--out", "--plot", "--arc-submission"])
def test_an_output_that_is_a_directory_is_refused_before_evaluating(checkpoint, tmp_path, capsys,
                                                                     flag):
    taken = tmp_path / "taken"
    taken.mkdir()
    args = ["--checkpoint-dir", str(checkpoint[0]), "--no-progress", "--out",
            str(tmp_path / "res.json"), flag, str(taken)]
    assert evaluate_cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {taken} is a directory; give a file path"
    assert [p.name for p in tmp_path.iterdir()] == ["taken"] and not any(taken.iterdir())


@pytest.mark.parametrize("extra, message", [
    (["--out", "."], "--out '.' is a directory; give a file path"),
    (["--out", ""], "--out '' is a directory; give a file path"),
    (["--plot", "{tmp}/p.txt"], "--plot {tmp}/p.txt: the plot is a PNG image"),
    (["--plot", "{tmp}/res.json"], "--out and --plot both name {tmp}/res.json"),
    (["--plot", "{tmp}/x/../same.png", "--arc-submission", "{tmp}/same.png"],
     "--plot and --arc-submission both name {tmp}/x/../same.png"),
    (["--plot", "/proc/no_such_dir/p.png"],
     "cannot write /proc/no_such_dir/p.png: No such file or directory: /proc/no_such_dir"),
])
def test_unusable_outputs_are_refused_before_evaluating(checkpoint, tmp_path, capsys, extra,
                                                        message):
    """The outputs are checked before the model loads: a clash or an unwritable place would
    otherwise be found after the whole evaluation, or lose one output to another."""
    args = ["--checkpoint-dir", str(checkpoint[0]), "--no-progress", "--out",
            str(tmp_path / "res.json"), *(a.format(tmp=tmp_path) for a in extra)]
    assert evaluate_cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message.format(tmp=tmp_path) in err, err
    assert "\n" not in err and not any(tmp_path.iterdir())


def test_aim_run_in_a_missing_repository_creates_nothing(checkpoint, tmp_path, capsys):
    repo = tmp_path / "no_aim"
    args = ["--checkpoint-dir", str(checkpoint[0]), "--no-progress", "--out",
            str(tmp_path / "res.json"), "--aim-run", "deadbeef", "--aim-repo", str(repo)]
    assert evaluate_cli.main(args) == 2
    assert capsys.readouterr().err.strip() == (f"error: no Aim repository at {repo} "
                                               "(for run deadbeef)")
    assert not repo.exists()


def test_a_missing_training_data_set_is_one_error(sudoku_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(sudoku_dir, data)
    ckpt, _ = save_tiny_checkpoint(tmp_path / "run", data)
    shutil.rmtree(data)
    out = tmp_path / "res.json"
    assert evaluate_cli.main(["--checkpoint-dir", str(ckpt), "--no-progress", "--out",
                              str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: the training run's data set, {data}") and "\n" not in err
    assert "give --data-dir" in err and not out.exists()


@pytest.mark.parametrize("kind", ["flip_bit"])  # the others: test_checkpoint.py
def test_damaged_latest_step_falls_back_then_one_error(checkpoint, tmp_path, capsys, kind):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint[0], ckpt)
    shutil.copytree(ckpt / "7", ckpt / "9")  # a newer step with the same content
    damage_step(ckpt / "9", kind)
    out = tmp_path / "res.json"
    args = ["--checkpoint-dir", str(ckpt), "--no-progress", "--out", str(out)]
    assert evaluate_cli.main(args) == 0
    notices = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(notices) == 1 and notices[0].startswith("notice: checkpoint step 9 is unusable")
    assert json.loads(out.read_text())["source"]["step"] == 7
    assert evaluate_cli.main([*args, "--step", "9"]) == 2  # asked for by name: no fallback
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: checkpoint step 9 is unusable") and "\n" not in err
    damage_step(ckpt / "7", "delete_state")
    assert evaluate_cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no usable checkpoint in") and "\n" not in err


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*")}


def test_evaluation_leaves_a_running_training_s_checkpoints_alone(checkpoint, tmp_path,
                                                                  caplog):
    """A save in progress (orbax's temporary step directory) is not cleaned up, and nothing
    in the directory is written or removed: the training writing it may still be running.
    Orbax's warnings that the reader is read-only (as asked) are not shown."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint[0], ckpt)
    shutil.copytree(ckpt / "7", ckpt / "9.orbax-checkpoint-tmp-1234")
    before = _tree(ckpt)
    with caplog.at_level(logging.INFO):
        assert evaluate_cli.main(["--checkpoint-dir", str(ckpt), "--no-progress", "--out",
                                  str(tmp_path / "res.json")]) == 0
    assert _tree(ckpt) == before
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert json.loads((tmp_path / "res.json").read_text())["source"]["step"] == 7


def test_each_arc_split_gets_its_own_submission_file(tmp_path):
    def paths(**flags):
        args = EvalArgs(checkpoint_dir="c", out=str(tmp_path / "res.json"), **flags)
        return [Path(args.submission_path(s, several=len(args.split) > 1)).name
                for s in args.split]

    assert paths() == ["res_submission.json"]
    assert paths(split=("train", "test")) == ["res_train_submission.json",
                                              "res_test_submission.json"]
    named = {"arc_submission": str(tmp_path / "sub.json")}
    assert paths(**named) == ["sub.json"]
    assert paths(**named, split=("train", "test")) == ["sub_train.json", "sub_test.json"]
    every = EvalArgs(checkpoint_dir="c", out="res.json", split=("train", "test"), **named)
    assert {str(tmp_path / n) for n in ("sub_train.json", "sub_test.json")} <= set(
        every.output_files())


def test_the_eval_batch_is_known_before_jax_starts(checkpoint, sudoku_dir, tmp_path):
    """evaluate.py splits the CPU into devices dividing the batch it will use; without
    --batch-size that is the run's, read from the stored configs as plain JSON."""
    ckpt, _ = checkpoint
    def planned(*flags: str) -> tuple[int, ...]:
        args = parse_args(EvalArgs, list(flags), "evaluate.py")
        return planned_batches(args, args.batch_size)

    assert planned("--checkpoint-dir", str(ckpt)) == (8,)
    assert planned("--checkpoint-dir", str(ckpt), "--batch-size", "6") == (6,)
    assert planned("--official-weights", str(tmp_path / "w.npz")) == (768,)
    assert planned("--checkpoint-dir", "gs://b/run") == ()

    many = tmp_path / "ckpt"
    shutil.copytree(ckpt, many)
    shutil.copytree(many / "7", many / "9")
    config = many / "9" / "config" / "metadata"
    doc = json.loads(config.read_text())
    doc["run"]["eval"]["batch_size"] = None
    doc["run"]["optim"]["global_batch_size"] = 12
    config.write_text(json.dumps(doc))
    shutil.copytree(many / "7", many / "11")
    (many / "11" / "config" / "metadata").write_text("{garbled")
    assert planned("--checkpoint-dir", str(many)) == (8, 12)


@pytest.mark.slow
def test_cli_without_batch_size_splits_the_cpu_like_train_py(checkpoint, tmp_path):
    ckpt, _ = checkpoint
    out = tmp_path / "res.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    subprocess.run([sys.executable, "evaluate.py", "--checkpoint-dir", str(ckpt),
                    "--no-progress", "--out", str(out)], env=env, check=True,
                   cwd=Path(evaluate_cli.__file__).parent, capture_output=True)
    cores = len(os.sched_getaffinity(0))
    assert json.loads(out.read_text())["devices"] == max(
        n for n in range(1, cores + 1) if 8 % n == 0)
