"""Checkpointer: exact save/restore of module + optimizer + data iterator, retention, configs;
damaged, non-finite and unwritable checkpoints."""

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path

import equinox as eqx
import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import DAMAGE, damage_step, largest_file, unwritable

from trm.checkpoint import Checkpointer, SaveFailed, UnusableCheckpoint
from trm.config import ModelConfig
from trm.config_diff import TRAJECTORY, config_differences, run_differences, to_json
from trm.optim import adam_atan2
from trm.run_config import CheckpointConfig, OptimConfig, RunConfig

MODEL_CFG = ModelConfig(hidden_size=32, num_heads=2, L_cycles=2)


def _make_state(key, width=8):
    model = eqx.nn.MLP(3, 2, width, 2, activation=jax.nn.gelu, key=key)  # non-array leaves too
    opt = adam_atan2(1e-2, weight_decay=0.1)
    params = eqx.filter(model, eqx.is_array)
    return {"model": model, "opt_state": opt.init(params), "step": jnp.int32(0)}


@eqx.filter_jit
def _train_step(state, i):
    opt = adam_atan2(1e-2, weight_decay=0.1)
    params = eqx.filter(state["model"], eqx.is_array)
    grads = jax.tree.map(lambda p: jnp.sin(p + i), params)
    updates, opt_state = opt.update(grads, state["opt_state"], params)
    return {"model": eqx.apply_updates(state["model"], updates), "opt_state": opt_state,
            "step": state["step"] + 1}


def _train(state, n):
    for i in range(n):
        state = _train_step(state, jnp.float32(i))
    return state


def _data_iter():
    ds = grain.MapDataset.source(list(range(100))).shuffle(seed=3).map(lambda x: 2 * x)
    return iter(ds.batch(4).to_iter_dataset())


def _assert_trees_equal(a, b):
    la, lb = jax.tree.leaves(eqx.filter(a, eqx.is_array)), jax.tree.leaves(
        eqx.filter(b, eqx.is_array))
    assert len(la) == len(lb) > 0
    for x, y in zip(la, lb):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_save_restore_is_exact_and_resumes_iterator(tmp_path):
    state = _train(_make_state(jax.random.key(0)), 3)
    it = _data_iter()
    for _ in range(3):
        next(it)
    run_cfg = RunConfig(model=MODEL_CFG)
    with Checkpointer(tmp_path, CheckpointConfig(async_save=True), MODEL_CFG, run_cfg) as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.save(3, state, data_iter=it)
        ckpt.wait_until_finished()
        expected_batches = [next(it) for _ in range(4)]
    with Checkpointer(tmp_path, CheckpointConfig(), MODEL_CFG) as ckpt:
        assert ckpt.latest_step() == 3
        assert ckpt.stored_config()["run"]["optim"]["lr"] == run_cfg.optim.lr
        template = eqx.filter_eval_shape(_make_state, jax.random.key(1))
        fresh_it = _data_iter()
        restored = ckpt.restore(template, data_iter=fresh_it)
    _assert_trees_equal(restored, state)
    assert restored["model"].activation is jax.nn.gelu
    assert int(restored["step"]) == 3
    for want in expected_batches:
        np.testing.assert_array_equal(next(fresh_it), want)
    # the restored state keeps training exactly like the original
    _assert_trees_equal(_train(restored, 2), _train(state, 2))


def test_keeps_last_k_plus_best_metric(tmp_path):
    state = _make_state(jax.random.key(0))
    accs = {1: 0.1, 2: 0.9, 3: 0.3, 4: 0.2, 5: 0.4, 6: 0.5}
    cfg = CheckpointConfig(keep_last=2, keep_best_metric="test/acc", async_save=False)
    with Checkpointer(tmp_path / "max", cfg, MODEL_CFG) as ckpt:
        for step, acc in accs.items():
            ckpt.save(step, state, metrics={"test/acc": acc})
        assert ckpt.all_steps() == [2, 5, 6]
    cfg = CheckpointConfig(keep_last=1, keep_best_metric="loss", best_mode="min",
                           async_save=False)
    with Checkpointer(tmp_path / "min", cfg, MODEL_CFG) as ckpt:
        for step, acc in accs.items():
            ckpt.save(step, state, metrics={"loss": acc})
        ckpt.save(7, state)  # no metrics: kept only as a latest step
        assert ckpt.all_steps() == [1, 7]
    with Checkpointer(tmp_path / "plain", CheckpointConfig(keep_last=3, async_save=False),
                      MODEL_CFG) as ckpt:
        for step in accs:
            ckpt.save(step, state)
        assert ckpt.all_steps() == [4, 5, 6]


@pytest.mark.parametrize("garbled", ['{"test/acc', '["not", "a dict"]', '{"test/acc": "high"}',
                                     b"\xff\xfe"])
def test_a_damaged_metrics_file_costs_only_its_ranking(tmp_path, capsys, garbled):
    """orbax reads every step's metrics when it opens a directory and raised on one damaged
    file: every restore, resume and evaluation of the run stopped, naming no file. Now the
    step reads as unevaluated (one notice naming the file, none when read-only) and is kept
    (it may be the best) until evaluated again; the best is ranked among the other steps."""
    state = _make_state(jax.random.key(0))
    cfg = CheckpointConfig(keep_last=1, keep_best_metric="test/acc", async_save=False)
    with Checkpointer(tmp_path, cfg, MODEL_CFG) as ckpt:
        for step, acc in {1: 0.5, 2: 0.9, 3: 0.1}.items():
            ckpt.save(step, state, metrics={"test/acc": acc})
    damaged = tmp_path / "2" / "metrics" / "metrics"
    if isinstance(garbled, bytes):
        damaged.write_bytes(garbled)
    else:
        damaged.write_text(garbled)
    with Checkpointer(tmp_path, CheckpointConfig(async_save=False), MODEL_CFG,
                      read_only=True) as reader:
        _assert_trees_equal(reader.restore(state, step=2), state)
    assert capsys.readouterr().err == ""
    with Checkpointer(tmp_path, cfg, MODEL_CFG) as ckpt:
        assert not ckpt.evaluated(2) and ckpt.evaluated(3)
        ckpt.save(4, state, metrics={"test/acc": 0.3})
        assert ckpt.all_steps() == [2, 4]  # 4 the latest and best ranked; 2 unranked, kept
        ckpt.record_evaluation(2, {"test/acc": 0.9})  # evaluated again: ranked
        assert ckpt.evaluated(2)
        ckpt.save(5, state, metrics={"test/acc": 0.4})
        assert ckpt.all_steps() == [2, 5]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"notice: {damaged}: unreadable metrics (")

def test_restore_refuses_another_model_config(tmp_path):
    state = _make_state(jax.random.key(0))
    with Checkpointer(tmp_path, CheckpointConfig(async_save=False), MODEL_CFG) as ckpt:
        ckpt.save(1, state)
    other = ModelConfig(hidden_size=64, num_heads=2, L_cycles=4)
    with (Checkpointer(tmp_path, CheckpointConfig(), other) as ckpt,
          pytest.raises(ValueError, match="hidden-size stored 32, requested 64.*L-cycles")):
        ckpt.restore(state)
    stored = {k: v for k, v in ModelConfig().__dict__.items() if k != "mlp_t"}
    assert config_differences(stored, ModelConfig()) == []   # missing field = its default
    with pytest.raises(FileNotFoundError):
        Checkpointer(tmp_path / "empty", CheckpointConfig(), MODEL_CFG).restore(state)


def test_restore_with_sharded_template(tmp_path):
    mesh = jax.make_mesh((8,), ("data",))
    shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    state = {"table": jax.device_put(jnp.arange(64.0).reshape(16, 4), shard)}
    with Checkpointer(tmp_path, CheckpointConfig(async_save=False), MODEL_CFG) as ckpt:
        ckpt.save(1, state)
        restored = ckpt.restore(state)
    assert restored["table"].sharding == shard
    _assert_trees_equal(restored, state)


# ---------------------------------------------------------------------------------------------
# Unusable checkpoints and failed saves


def _two_steps(directory):
    """Steps 1 and 2 of a state with arrays of 64 KiB + iterator; returns the state at 1."""
    states = {1: _train(_make_state(jax.random.key(0), width=128), 1)}
    states[2] = _train(states[1], 1)
    it = _data_iter()
    with Checkpointer(directory, CheckpointConfig(async_save=False), MODEL_CFG,
                      RunConfig(model=MODEL_CFG)) as ckpt:
        for step, state in states.items():
            next(it)
            ckpt.save(step, state, data_iter=it)
    return states[1]


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory):
    directory = tmp_path_factory.mktemp("two_steps")
    return directory, _two_steps(directory)


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_latest_step_falls_back_with_one_notice(two_steps, tmp_path, kind):
    source, state1 = two_steps
    shutil.copytree(source, tmp_path / "c")
    damage_step(tmp_path / "c" / "2", kind)
    notices = []
    with Checkpointer(tmp_path / "c", CheckpointConfig(), MODEL_CFG,
                      RunConfig(model=MODEL_CFG)) as ckpt:
        template = eqx.filter_eval_shape(_make_state, jax.random.key(1), 128)
        it = _data_iter()
        step, restored = ckpt.restore_newest_usable(template, it, notice=notices.append)
    assert step == 1
    _assert_trees_equal(restored, state1)
    np.testing.assert_array_equal(next(it), _batches_after(1))  # step 1's position
    assert len(notices) == 1 and "checkpoint step 2 is unusable" in notices[0]
    assert "\n" not in notices[0] and len(notices[0]) < 400


def _batches_after(n):
    it = _data_iter()
    for _ in range(n):
        next(it)
    return next(it)


def test_no_usable_step_is_one_error(two_steps, tmp_path):
    source, _ = two_steps
    shutil.copytree(source, tmp_path / "c")
    damage_step(tmp_path / "c" / "2", "flip_bit")
    damage_step(tmp_path / "c" / "1", "delete_state")
    notices = []
    with (Checkpointer(tmp_path / "c", CheckpointConfig(), MODEL_CFG) as ckpt,
          pytest.raises(ValueError, match="no usable checkpoint") as e):
        ckpt.restore_newest_usable(_make_state(jax.random.key(1), 128), notice=notices.append)
    assert "step 2: 1 array(s) do not match their checksums" in str(e.value)
    assert "step 1: KeyError" in str(e.value) and "\n" not in str(e.value) and not notices


def test_the_abandoned_reads_of_an_unusable_step_are_not_logged(two_steps, tmp_path):
    """asyncio logs each task of a failed orbax read when it is collected, at any later time
    (hundreds of lines after the one-line report): those records are dropped, others kept."""
    source, _ = two_steps
    shutil.copytree(source, tmp_path / "c")
    damage_step(tmp_path / "c" / "2", "delete_state")
    with (Checkpointer(tmp_path / "c", CheckpointConfig(), MODEL_CFG) as ckpt,
          pytest.raises(UnusableCheckpoint) as e):
        ckpt.restore(_make_state(jax.random.key(1), 128), step=2)
    orbax_failure = e.value.__cause__
    assert orbax_failure is not None

    def logged(exc: BaseException, kind: str = "Task") -> bool:
        record = logging.LogRecord("asyncio", logging.ERROR, "base_events.py", 1,
                                   f"{kind} exception was never retrieved\nfuture: <{kind}>",
                                   None, (type(exc), exc, exc.__traceback__))
        return logging.getLogger("asyncio").filter(record)

    assert not any(logged(orbax_failure, kind) for kind in ("Task", "Future", "_GatheringFuture"))
    # a tensorstore future fails in C++: its exception has no Python frame, only its text
    frameless = ValueError('OUT_OF_RANGE: Error reading "carry.z_L/1.0.0" in OCDBT database at '
                           'local file "/x/14/state/": Requested byte range [0, 9) is not valid')
    assert not logged(frameless, "Future")
    try:
        raise RuntimeError("a task of ours")
    except RuntimeError as ours:
        assert logged(ours)


def test_non_finite_step_is_unusable(tmp_path):
    """A step written non-finite (as older versions could) is skipped like a damaged one."""
    good = _make_state(jax.random.key(0))
    bad = jax.tree.map(lambda x: x * jnp.nan if eqx.is_inexact_array(x) else x, good)
    with Checkpointer(tmp_path, CheckpointConfig(async_save=False), MODEL_CFG) as ckpt:
        ckpt.save(1, good)
        ckpt.save(2, bad)
        with pytest.raises(UnusableCheckpoint, match="non-finite"):
            ckpt.restore(good, step=2)
        step, restored = ckpt.restore_newest_usable(good, notice=lambda _: None)
        assert step == 1
        ckpt.set_aside([2])
        assert ckpt.all_steps() == [1] and (tmp_path / "unusable" / "2").is_dir()
        ckpt.save(2, good)  # the step number is free again
        assert ckpt.all_steps() == [1, 2]
    _assert_trees_equal(restored, good)


@pytest.mark.parametrize("async_save", [False, True])
def test_failed_save_raises_one_line_and_keeps_the_good_steps(tmp_path, async_save):
    state = _make_state(jax.random.key(0))
    ckpt = Checkpointer(tmp_path, CheckpointConfig(async_save=async_save), MODEL_CFG)
    ckpt.save(1, state)
    ckpt.wait_until_finished()
    start = time.perf_counter()
    with unwritable(tmp_path), pytest.raises(SaveFailed) as e:
        ckpt.save(2, state)
        ckpt.close()
    assert time.perf_counter() - start < 30
    assert "writing" in str(e.value) and str(tmp_path) in str(e.value)
    assert "\n" not in str(e.value)
    with contextlib.suppress(SaveFailed):
        ckpt.close()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["1"]
    with Checkpointer(tmp_path, CheckpointConfig(), MODEL_CFG) as again:
        _assert_trees_equal(again.restore(state), state)


def test_ema_rate_differs_only_while_ema_is_on():
    def run(ema: bool, rate: float) -> dict:
        return to_json(RunConfig(optim=OptimConfig(ema=ema, ema_rate=rate)))

    assert run_differences(run(False, 0.999), RunConfig(optim=OptimConfig(ema=False, ema_rate=0.9)),
                           TRAJECTORY) == []
    assert run_differences(run(True, 0.999), RunConfig(optim=OptimConfig(ema=True, ema_rate=0.9)),
                           TRAJECTORY) == ["--optim.ema-rate stored 0.999, requested 0.9"]
    assert run_differences(run(True, 0.999), RunConfig(optim=OptimConfig(ema=False, ema_rate=0.9))
                           ) == ["--optim.ema stored True, requested False"]


def _restore_notice(directory) -> str:
    notices = []
    with Checkpointer(directory, CheckpointConfig(), MODEL_CFG, RunConfig(model=MODEL_CFG)) as c:
        step, _ = c.restore_newest_usable(
            eqx.filter_eval_shape(_make_state, jax.random.key(1), 128), notice=notices.append)
    assert step == 1 and len(notices) == 1
    return notices[0]


def test_an_unreadable_step_is_named_not_called_a_type_mismatch(two_steps, tmp_path,
                                                                 monkeypatch):
    """Orbax reports a state it may not read as a tree type mismatch; the notice names the
    file instead. (Permissions do not bind root: a denied read is simulated on a damaged
    file; the next test makes the folder unreadable for real where it can.)"""
    source, _ = two_steps
    shutil.copytree(source, tmp_path / "c")
    denied = largest_file(tmp_path / "c" / "2" / "state" / "ocdbt.process_0" / "d")
    damage_step(tmp_path / "c" / "2", "garble")
    real_access = os.access
    monkeypatch.setattr("data.storage.os.access",
                        lambda p, mode: Path(p) != denied and real_access(p, mode))
    assert f"step 2 is unusable: permission denied: cannot read {denied}" in _restore_notice(
        tmp_path / "c")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_a_state_folder_without_read_permission_is_named(two_steps, tmp_path):
    source, _ = two_steps
    shutil.copytree(source, tmp_path / "c")
    state = tmp_path / "c" / "2" / "state"
    state.chmod(0)
    try:
        assert f"permission denied: cannot read {state}" in _restore_notice(tmp_path / "c")
    finally:
        state.chmod(0o755)
