"""On-disk layout of a built data set and its metadata.

    DIR/metadata.json                       DatasetMetadata fields per split + build info
    DIR/{train,test}/{inputs,labels}.npy    Sudoku, maze: uint8 tokens [n, seq_len]
    DIR/arc/*.npy, DIR/arc/tasks.json       ARC: base grids, example table, augmentation pool

Only base puzzles are stored; augmentation happens in the pipeline.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from jaxtyping import Int, UInt8

from data.common import BLANK_IDENTIFIER_ID, IGNORE_LABEL_ID, PAD_ID, DataError, read_json

FORMAT_VERSION = 1
SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class DatasetMetadata:
    """What the model config and the step budget need from one split of a data set.

    total_steps = epochs * total_groups * mean_puzzle_examples / global_batch (official);
    `examples_per_epoch` is what one pass of `train_iterator` (train) or `eval_batches`
    (test: every augmented copy) actually yields.
    """

    name: str                       # "sudoku" | "maze" | "arc"
    split: str
    vocab_size: int
    seq_len: int
    num_puzzle_identifiers: int
    total_groups: int               # base puzzles (ARC: tasks)
    mean_puzzle_examples: float     # examples per puzzle, averaged over the pooled copies
    total_puzzles: int              # puzzles in the pool at default_num_aug
    examples_per_epoch: int
    default_num_aug: int
    grid_size: int                  # 9, maze side, 30
    pad_id: int = PAD_ID
    ignore_label_id: int = IGNORE_LABEL_ID
    blank_identifier_id: int = BLANK_IDENTIFIER_ID


def write_metadata(out: Path, common: dict[str, Any], splits: dict[str, dict[str, Any]],
                   build: dict[str, Any]) -> None:
    """metadata.json: shared fields, per-split statistics, build information."""
    doc = {"format": FORMAT_VERSION, **common, "splits": splits, "build": build}
    (out / "metadata.json").write_text(json.dumps(doc, indent=1) + "\n")


def read_metadata_json(data_dir: Path) -> dict[str, Any]:
    path = Path(data_dir) / "metadata.json"
    if not path.is_file():
        raise DataError(f"{data_dir}: not a built data set (no metadata.json); "
                        "build it with `python -m data build ...`")
    doc = read_json(path)
    if doc.get("format") != FORMAT_VERSION:
        raise DataError(f"{path}: format {doc.get('format')!r}, expected {FORMAT_VERSION}; "
                        "rebuild the data set")
    return doc


def load_metadata(data_dir: Path | str, split: str = "train") -> DatasetMetadata:
    """DatasetMetadata of one split ("train" or "test") of a built data set. DataError when the
    data set is incomplete or an array file is damaged (`check_arrays`), so that a run stops
    before its first step, not at the first read of the broken file."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} (expected one of {SPLITS})")
    doc = read_metadata_json(Path(data_dir))
    check_arrays(Path(data_dir), doc)
    fields = {f.name for f in dataclasses.fields(DatasetMetadata)}
    shared = {k: v for k, v in doc.items() if k in fields}
    return DatasetMetadata(split=split, **shared, **doc["splits"][split])


def array_files(data_dir: Path, doc: dict[str, Any]) -> list[Path]:
    """The .npy files a data set with metadata `doc` holds."""
    if doc.get("name") == "arc":
        return [data_dir / "arc" / f"{name}.npy" for name in ArcArrays._fields]
    return [data_dir / split / f"{name}.npy" for split in doc.get("splits", SPLITS)
            for name in ("inputs", "labels")]


def load_array(path: Path, *, mmap: bool = True) -> np.ndarray:
    """One array file of a data set (memory-mapped unless `mmap` is False); DataError naming
    the file when it is missing or damaged (e.g. truncated)."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: missing, the data set is incomplete; rebuild it") from None
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: damaged ({e}); rebuild the data set") from None


def check_arrays(data_dir: Path, doc: dict[str, Any]) -> None:
    """Every array file of the data set opens (header read and size checked), the arrays of
    one split agree in their number of rows, and Sudoku / maze tokens are below vocab_size."""
    for path in array_files(data_dir, doc):
        load_array(path)
    if doc.get("name") == "arc":
        d = data_dir / "arc"
        _check_arc_rows(d, {name: load_array(d / f"{name}.npy") for name in ArcArrays._fields})
    else:
        for split in doc.get("splits", SPLITS):
            for name, tokens in zip(("inputs", "labels"), read_puzzles(data_dir, split),
                                    strict=True):
                if tokens.size and int(tokens.max()) >= doc["vocab_size"]:
                    raise DataError(f"{data_dir / split / name}.npy holds token "
                                    f"{int(tokens.max())}, outside the data set's vocab_size "
                                    f"{doc['vocab_size']}; rebuild the data set")


def _check_arc_rows(directory: Path, arrays: dict[str, np.ndarray]) -> None:
    """The ARC arrays of examples, and those of tasks, agree in their number of rows."""
    _same_rows(directory, {k: arrays[k] for k in ("grids", "shapes", "task", "split", "index")})
    _same_rows(directory, {k: arrays[k] for k in ("pool_dihedral", "pool_colours", "pool_count")})


def _same_rows(directory: Path, arrays: dict[str, np.ndarray]) -> None:
    """DataError unless the arrays (name -> array) have the same number of rows."""
    if len({a.shape[:1] for a in arrays.values()}) > 1:
        shapes = ", ".join(f"{name}.npy {a.shape}" for name, a in arrays.items())
        raise DataError(f"{directory}: arrays of different lengths ({shapes}); rebuild the "
                        "data set")


def write_puzzles(out: Path, split: str, inputs: np.ndarray, labels: np.ndarray) -> None:
    (out / split).mkdir(parents=True, exist_ok=True)
    np.save(out / split / "inputs.npy", inputs.astype(np.uint8))
    np.save(out / split / "labels.npy", labels.astype(np.uint8))


def read_puzzles(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, labels) uint8 tokens [n, seq_len], memory-mapped."""
    d = Path(data_dir) / split
    inputs, labels = load_array(d / "inputs.npy"), load_array(d / "labels.npy")
    if inputs.ndim != 2 or inputs.shape != labels.shape:
        raise DataError(f"{d}: inputs.npy {inputs.shape} and labels.npy {labels.shape} are not "
                        "two [puzzles, seq_len] arrays of one shape; rebuild the data set")
    return inputs, labels


class ArcArrays(NamedTuple):
    """Base ARC data. Examples are grouped by task (a task's train examples, then its test
    examples, each in file order); split 0 = train, 1 = test (test pairs of the test subset)."""

    grids: UInt8[np.ndarray, "n 2 30 30"]      # raw colours, top-left, zero elsewhere
    shapes: UInt8[np.ndarray, "n 2 2"]         # (height, width) of input and output
    task: Int[np.ndarray, " n"]
    split: UInt8[np.ndarray, " n"]
    index: Int[np.ndarray, " n"]               # position among the task's examples of its split
    pool_dihedral: UInt8[np.ndarray, "t p"]
    pool_colours: UInt8[np.ndarray, "t p 10"]
    pool_count: Int[np.ndarray, " t"]


def write_arc(out: Path, arrays: ArcArrays, tasks: list[tuple[str, str]]) -> None:
    (out / "arc").mkdir(parents=True, exist_ok=True)
    for name, value in arrays._asdict().items():
        np.save(out / "arc" / f"{name}.npy", value)
    (out / "arc" / "tasks.json").write_text(json.dumps(tasks) + "\n")


def read_arc(data_dir: Path) -> tuple[ArcArrays, list[tuple[str, str]]]:
    """(arrays, [(task id, subset), ...]) of a built ARC data set."""
    d = Path(data_dir) / "arc"
    arrays = ArcArrays(*(load_array(d / f"{name}.npy", mmap=False) for name in ArcArrays._fields))
    _check_arc_rows(d, arrays._asdict())
    return arrays, [tuple(x) for x in read_json(d / "tasks.json")]
