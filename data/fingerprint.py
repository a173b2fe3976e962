"""Data-set fingerprint: what a model trained on a data set depends on, so that a checkpoint is
not evaluated or resumed on a data set that reads differently.

`python -m data build` writes it to metadata.json ("fingerprint"); training stores it in every
checkpoint; `evaluate.py`, `evaluate.py solve` and resume compare the two (`check`).

Fields: the fingerprint version, kind, vocab_size, seq_len, num_puzzle_identifiers and, for
ARC, the puzzle-identifier map: the builder's seed and num_aug, the number of tasks, a digest of
the task list (ids and subsets, in order) and a digest of the augmentation pool (copies per
task, each copy's dihedral transform and colour map). Identifier i means "task t, copy k" only
for this map. Sudoku and maze identifiers are all blank, so the seed and num_aug there only
choose training augmentations: evaluating on another Sudoku set is legitimate and not refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from data.arc import Pool
from data.common import DataError
from data.store import array_files, read_metadata_json

VERSION = 1
_SCALARS = ("version", "kind", "vocab_size", "seq_len", "num_puzzle_identifiers")


def _digest(*parts: Any) -> str:
    """First 16 hex digits of the SHA-256 of JSON values or numpy arrays."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(str((p.dtype.str, p.shape)).encode())
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True).encode())
    return h.hexdigest()[:16]


def arc_identifiers(tasks: list[tuple[str, str]], pool: Pool, *, seed: int, num_aug: int
                    ) -> dict[str, Any]:
    """The ARC identifier map's part of the fingerprint."""
    valid = np.arange(pool.dihedral.shape[1])[None, :] < pool.count[:, None]
    return {"seed": seed, "num_aug": num_aug, "num_tasks": len(tasks),
            "tasks": _digest([list(t) for t in tasks]),
            "pool": _digest(pool.count.astype(np.int64), np.where(valid, pool.dihedral, 0),
                            np.where(valid[..., None], pool.colours, 0))}


def make(common: dict[str, Any], identifiers: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fingerprint of a data set from its shared metadata fields (+ ARC identifier map)."""
    return {"version": VERSION, "kind": common["name"],
            **{k: common[k] for k in _SCALARS[2:]}, **(identifiers or {})}


def read(data_dir: str | Path) -> dict[str, Any] | None:
    """The fingerprint of a built data set; None if it was built before fingerprints."""
    return read_metadata_json(Path(data_dir)).get("fingerprint")


def differences(trained: dict[str, Any], data: dict[str, Any]) -> list[str]:
    """'field: checkpoint X, data set Y' for each field that differs."""
    keys = list(dict.fromkeys([*trained, *data]))
    return [f"{k}: checkpoint {trained.get(k)!r}, data set {data.get(k)!r}" for k in keys
            if trained.get(k) != data.get(k)]


def check(trained: dict[str, Any] | None, data_dir: str | Path, *, allow_mismatch: bool,
          official: bool = False, flag: str = "--allow-data-mismatch") -> list[str]:
    """Compare the fingerprint a model was trained with to data set `data_dir`'s.

    Returns warning lines (nothing to check, a mismatch allowed by `allow_mismatch`, official
    weights on an ARC set built without the official identifiers); raises DataError on a
    mismatch otherwise, naming `flag` (the option that sets allow_mismatch), and always when
    the model cannot read the data set (vocab_size or seq_len differ, or the data set has more
    puzzle identifiers).
    `trained` None: a checkpoint written before fingerprints (or official weights).
    """
    data = read(data_dir)
    doc = read_metadata_json(Path(data_dir))
    if official:
        line = (f"official weights on the ARC set {data_dir}, built without --official-rng: "
                "its puzzle identifiers are not the official ones (task embeddings will not "
                "match; rebuild it with --official-rng and the official build's --seed and "
                "--num-aug)")
        official_ids = doc.get("build", {}).get("official_rng", False)
        return [line] if doc.get("name") == "arc" and not official_ids else []
    if data is None:
        line = (f"{data_dir} has no fingerprint (built before fingerprints; rebuild it with "
                "`python -m data build`): not checked against the checkpoint")
        return [line]
    if trained is None:
        line = ("the checkpoint records no data-set fingerprint (written before "
                f"fingerprints): not checked against {data_dir}")
        return [line]
    diffs = differences(trained, data)
    if not diffs:
        return []
    what = f"{data_dir} differs from the checkpoint's training data ({'; '.join(diffs)})"
    unreadable = [k for k in ("vocab_size", "seq_len") if trained.get(k) != data.get(k)]
    if data.get("num_puzzle_identifiers", 0) > trained.get("num_puzzle_identifiers", 0):
        unreadable.append("num_puzzle_identifiers")  # more than the model's embedding has
    if unreadable:  # no flag helps: the model's input or embedding shapes do not fit
        raise DataError(f"{what}: the model cannot read it ({', '.join(unreadable)}); give "
                        "the data set it was trained on")
    if allow_mismatch:
        return [f"{what}; proceeding ({flag})"]
    raise DataError(f"{what}: rebuild it as the training set was built, or pass {flag}")


def contents(data_dir: str | Path) -> str:
    """Digest of the array files a run trains on (their bytes, in `array_files` order: the
    train split's, ARC's shared tables whole): what a resumed run reads must be what it was
    trained on, whatever the fingerprint allows (a rebuild from other CSVs, another set copied
    under the same path). The test split of Sudoku and maze sets is left out: evaluating on
    other test puzzles changes no training."""
    data_dir = Path(data_dir)
    doc = read_metadata_json(data_dir)
    h = hashlib.sha256()
    for path in array_files(data_dir, doc):
        if doc.get("name") != "arc" and path.parent.name != "train":
            continue
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()[:16]


def check_contents(trained: str | None, current: str, data_dir: str | Path, *,
                   allow_mismatch: bool, flag: str) -> list[str]:
    """Resume: compare the `contents` digest a run was trained on with `current`, data set
    `data_dir`'s (`trained` None: a checkpoint written before digests, not checked). Warning
    lines when they differ and `allow_mismatch`; DataError naming `flag` otherwise."""
    if trained is None or trained == current:
        return []
    what = (f"{data_dir} holds other training puzzles than the run was trained on (another "
            "build or another set under this path): the data order and the schedule's length "
            "would change")
    if allow_mismatch:
        return [f"{what}; proceeding ({flag})"]
    raise DataError(f"{what}; give the data set it was trained on, or pass {flag}")
