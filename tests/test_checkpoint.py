"""Checkpointer: exact save/restore of module + optimizer + data iterator, retention, configs."""

import equinox as eqx
import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trm.checkpoint import Checkpointer, config_differences
from trm.config import ModelConfig
from trm.optim import adam_atan2
from trm.run_config import CheckpointConfig, RunConfig

MODEL_CFG = ModelConfig(hidden_size=32, num_heads=2, L_cycles=2)


def _make_state(key):
    model = eqx.nn.MLP(3, 2, 8, 2, activation=jax.nn.gelu, key=key)  # non-array leaves too
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
