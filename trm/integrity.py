"""Is a state usable? Finiteness and checksums of PyTrees of arrays, computed on device.

- `all_finite(tree)`: one boolean, True when every floating-point leaf is finite (the train
  step reports it for the new state; checkpoints are only written when it holds).
- `digests(tree)`: per array leaf, a Fletcher-style pair (sum of its 32-bit words, sum of
  word * position), both mod 2^32, computed under jit from the (possibly sharded) arrays, so
  every host gets the same numbers. Stored with a checkpoint and compared after a restore,
  they catch bytes changed on disk that still decode (accidental damage, not tampering).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, UInt32


def all_finite(tree: Any) -> Bool[Array, ""]:
    """True when every inexact (float / complex) array leaf of `tree` is all finite."""
    leaves = jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))
    if not leaves:
        return jnp.array(True)
    return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]).all()


def _words(x: Array) -> UInt32[Array, " n"]:
    """The raw bits of `x` as 32-bit words, one per element (narrower types zero-extended)."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    bits = x.dtype.itemsize * 8
    if bits > 32:
        x = jax.lax.bitcast_convert_type(x, jnp.uint32)  # [..., bits // 32]
    elif x.dtype != jnp.dtype(f"uint{bits}"):
        x = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{bits}"))
    return x.astype(jnp.uint32).ravel()


@jax.jit
def _leaf_digests(leaves: list[Array]) -> list[Array]:
    out = []
    for x in leaves:
        w = _words(x)
        position = jnp.arange(1, w.size + 1, dtype=jnp.uint32)
        out.append(jnp.stack([w.sum(dtype=jnp.uint32), (w * position).sum(dtype=jnp.uint32)]))
    return out


def digests(tree: Any) -> dict[str, list[int]]:
    """Leaf path (jax.tree_util.keystr) -> [word sum, position-weighted sum] of every array
    leaf of `tree` (non-array leaves are skipped)."""
    paths_leaves = jax.tree_util.tree_flatten_with_path(eqx.filter(tree, eqx.is_array))[0]
    if not paths_leaves:
        return {}
    values = jax.device_get(_leaf_digests([x for _, x in paths_leaves]))
    return {jax.tree_util.keystr(p): [int(v) for v in d]
            for (p, _), d in zip(paths_leaves, values, strict=True)}


def digest_mismatches(stored: dict[str, list[int]], tree: Any) -> list[str]:
    """Paths of the leaves of `tree` whose digest differs from `stored` (or is missing)."""
    actual = digests(tree)
    return [p for p in sorted(set(stored) | set(actual)) if stored.get(p) != actual.get(p)]
