"""Finiteness and checksums of state PyTrees (trm.integrity)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trm.integrity import all_finite, digest_mismatches, digests


def _tree():
    return {"w": jnp.arange(12.0).reshape(3, 4), "half": jnp.ones(5, jnp.bfloat16),
            "count": jnp.int32(7), "flags": jnp.array([True, False]),
            "key": jax.random.key(3), "rest": (None, "static", 2.5)}


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf, -jnp.inf])
def test_all_finite_sees_any_non_finite_float_leaf(bad):
    tree = _tree()
    assert bool(all_finite(tree))
    assert not bool(all_finite({**tree, "half": tree["half"].at[2].set(bad)}))
    assert not bool(all_finite({**tree, "w": tree["w"].at[1, 3].set(bad)}))
    assert bool(all_finite({"n": jnp.int32(-1)})) and bool(all_finite({}))


def test_digests_name_the_changed_leaf_only():
    tree = _tree()
    stored = digests(tree)
    assert set(stored) == {"['count']", "['flags']", "['half']", "['key']", "['w']"}
    assert digest_mismatches(stored, tree) == []
    flipped = np.asarray(tree["w"]).view(np.uint32).copy()
    flipped[1, 2] ^= 1  # one bit of one float
    changed = {**tree, "w": jnp.asarray(flipped.view(np.float32))}
    assert digest_mismatches(stored, changed) == ["['w']"]
    swapped = {**tree, "w": tree["w"][::-1]}  # same words, other positions
    assert digest_mismatches(stored, swapped) == ["['w']"]
    assert digest_mismatches(stored, {**tree, "key": jax.random.key(4)}) == ["['key']"]
    assert digest_mismatches({}, tree) == sorted(stored)


def test_digests_do_not_depend_on_the_sharding():
    mesh = jax.make_mesh((8,), ("data",))
    x = jnp.arange(64.0).reshape(16, 4)
    sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
        "data")))
    assert digests({"x": sharded}) == digests({"x": x})
