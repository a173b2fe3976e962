"""Stateless, vectorised, counter-based random numbers (numpy).

Every random choice in the data pipeline is a pure function of integer keys (seed, a stream
tag, epoch, puzzle, augmentation index, ...): `hash_u64(seed, tag, epoch, group)` gives the
same 64-bit value on every host, worker and run, for any batch, in any order. This makes the
pipeline random-access (Grain `MapDataset`) and its state a single index.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Int, Integer, UInt64

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)

IntLike = int | np.integer | Integer[np.ndarray, "..."]
"""An integer key: a Python or numpy integer, or an integer array (broadcast together)."""

# Stream tags: one per kind of random decision, so streams never collide.
SHUFFLE, AUG_INDEX, FRESH, POOL, DIHEDRAL, COLOURS, TRANSLATE, NO_TRANSLATE = range(1, 9)


def _splitmix(x: np.ndarray | np.generic) -> np.ndarray | np.generic:
    """The splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def hash_u64(*keys: IntLike) -> UInt64[np.ndarray, "..."]:
    """Hash integer keys (broadcast together) to uniform uint64 values."""
    with np.errstate(over="ignore"):
        h = np.zeros((), np.uint64)
        for k in keys:
            h = _splitmix(h ^ np.asarray(k).astype(np.uint64))
    return np.asarray(h, dtype=np.uint64)


def randint(n: IntLike, *keys: IntLike) -> Int[np.ndarray, "..."]:
    """Uniform integers in [0, n) (n broadcasts with the keys); bias < n / 2**64."""
    return np.asarray(hash_u64(*keys) % np.asarray(n).astype(np.uint64), np.int64)


def permutations(n: int, *keys: IntLike) -> Int[np.ndarray, "... n"]:
    """A uniform random permutation of 0..n-1 per key: [..., n]."""
    key = hash_u64(*keys)
    return np.asarray(np.argsort(hash_u64(key[..., None], np.arange(n)), axis=-1), np.int64)
