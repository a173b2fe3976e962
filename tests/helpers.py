"""Small shared builders for the tests."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trm.config import ModelConfig
from trm.models import ACTModel, build_model

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL_CASES = ("attn_rope", "mlp_t_none", "attn_learned")


def tiny_config(**overrides) -> ModelConfig:
    """A CPU-sized model: 2 layers, hidden 32, short sequences."""
    base = ModelConfig(vocab_size=7, seq_len=12, num_puzzle_identifiers=4, puzzle_emb_len=2,
                       hidden_size=32, num_heads=4, expansion=2.0, L_layers=2, H_cycles=2,
                       L_cycles=2, halt_max_steps=4, halt_exploration_prob=0.0)
    return dataclasses.replace(base, **overrides)


def tiny_batch(config: ModelConfig, batch_size: int = 3, seed: int = 0):
    """(inputs, labels, puzzle_identifiers) with some ignored labels."""
    k_in, k_lab, k_ids = jax.random.split(jax.random.key(seed), 3)
    shape = (batch_size, config.seq_len)
    inputs = jax.random.randint(k_in, shape, 1, config.vocab_size, dtype=jnp.int32)
    labels = jax.random.randint(k_lab, shape, 1, config.vocab_size, dtype=jnp.int32)
    labels = labels.at[:, :2].set(-100)
    ids = jax.random.randint(k_ids, (batch_size,), 0, config.num_puzzle_identifiers,
                             dtype=jnp.int32)
    return inputs, labels, ids


def tiny_model(config: ModelConfig, seed: int = 0) -> ACTModel:
    """A model with random (not zero) puzzle embeddings and Q head, so every path matters."""
    model = build_model(config, key=jax.random.key(seed))
    k_p, k_q = jax.random.split(jax.random.key(seed + 1))
    return eqx.tree_at(
        lambda m: (m.puzzle_emb, m.q_head.weight), model,
        (jax.random.normal(k_p, model.puzzle_emb.shape),
         0.1 * jax.random.normal(k_q, model.q_head.weight.shape)))


# ---------------------------------------------------------------------------------------------
# Storage faults: damaged checkpoints, directories whose writes fail


def largest_file(directory: Path) -> Path:
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _flip_stored_bit(state_dir: Path) -> None:
    """Flip the lowest bit of the first element of the largest stored float array (zarr in
    orbax's OCDBT store), the way bit rot that still decodes would."""
    import tensorstore as ts

    base = {"driver": "ocdbt", "base": f"file://{state_dir}"}
    names = [k.decode().removesuffix("/.zarray")
             for k in ts.KvStore.open(base).result().list().result() if k.endswith(b"/.zarray")]
    stores = [ts.open({"driver": "zarr", "kvstore": {**base, "path": f"{n}/"}}).result()
              for n in names]
    store = max((t for t in stores if t.dtype == ts.float32), key=lambda t: t.size)
    values = store.read().result()
    bits = values.view(np.uint32).copy()
    bits.flat[0] ^= 1
    store.write(bits.view(np.float32)).result()


def damage_step(step_dir: Path, kind: str) -> None:
    """Damage one saved step in place: truncate / garble / flip bytes of the largest array
    file, flip one bit of a stored weight (written through tensorstore, so it decodes), delete
    an item or the OCDBT manifest, garble an item's metadata file."""
    data = largest_file(step_dir / "state" / "ocdbt.process_0" / "d")
    if kind == "truncate":
        os.truncate(data, data.stat().st_size // 2)
    elif kind == "empty":
        os.truncate(data, 0)
    elif kind == "garble":
        data.write_bytes(np.random.default_rng(0).bytes(data.stat().st_size))
    elif kind == "flip_bit":  # still decodes: only the stored checksums catch it
        _flip_stored_bit(step_dir / "state")
    elif kind == "flip_bytes":  # in the compressed chunk: it may or may not still decode
        raw = bytearray(data.read_bytes())
        mid = len(raw) // 2
        raw[mid:mid + 8] = bytes(b ^ 0xFF for b in raw[mid:mid + 8])
        data.write_bytes(bytes(raw))
    elif kind.startswith("delete_"):
        shutil.rmtree(step_dir / kind.removeprefix("delete_"))
    elif kind == "no_manifest":
        (step_dir / "state" / "manifest.ocdbt").unlink()
    elif kind == "garble_state_metadata":
        (step_dir / "state" / "_METADATA").write_bytes(b"\x95\xff not json")
    elif kind == "garble_config":
        (step_dir / "config" / "metadata").write_bytes(b"\xff\xfe not json")
    elif kind == "garble_data_iter":
        (step_dir / "data_iter" / "process_0-of-1.json").write_text("{]")
    else:
        raise ValueError(kind)


DAMAGE = ("truncate", "empty", "garble", "flip_bytes", "flip_bit", "delete_state",
          "delete_data_iter", "delete_config", "no_manifest", "garble_state_metadata",
          "garble_config", "garble_data_iter")


@contextlib.contextmanager
def unwritable(directory: Path) -> Iterator[None]:
    """Make creating files in `directory` fail (chmod for users, `chattr +i` for root);
    skips the test where neither works."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        undo = ["chmod", "755", str(directory)]
    elif subprocess.run(["chattr", "+i", str(directory)], capture_output=True,
                        check=False).returncode == 0:
        undo = ["chattr", "-i", str(directory)]
    else:
        pytest.skip("cannot make a directory unwritable here (root without chattr)")
    try:
        probe = directory / ".probe"
        try:
            probe.write_text("x")
            probe.unlink()
            pytest.skip("the directory stayed writable")
        except OSError:
            pass
        yield
    finally:
        subprocess.run(undo, check=True)
