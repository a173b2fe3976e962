"""Shared pieces of the data package: the error type, token ids, atomic file output."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data.storage import as_path, is_url, probe_write, scratch_dir

PAD_ID = 0
"""Token 0 pads inputs; a label 0 is ignored (mapped to IGNORE_LABEL_ID by the pipeline)."""
IGNORE_LABEL_ID = -100
"""Label id the loss ignores (official `IGNORE_LABEL_ID`)."""
BLANK_IDENTIFIER_ID = 0
"""Puzzle identifier 0 is "<blank>": padding rows, and every Sudoku / maze puzzle."""

SUDOKU_VOCAB, SUDOKU_SEQ = 11, 81        # PAD, blank, digits 1..9 -> 0, 1, 2..10
MAZE_CHARSET = "# SGo"                  # wall, free, start, goal, path -> 1..5
MAZE_SIZES = (4, 30)                    # generated mazes: side in cells, Maze-Hard's at most
MAZE_VOCAB = len(MAZE_CHARSET) + 1
ARC_VOCAB, ARC_SIZE = 12, 30            # PAD 0, EOS 1, colours 0..9 -> 2..11; 30x30 canvas
ARC_EOS = 1
ARC_SEQ = ARC_SIZE * ARC_SIZE


class DataError(Exception):
    """Bad input or a bad request; the message names the file, row/task and the problem."""


def count_rejections(in_a_row: int, accepted: int | bool, tried: int, *, limit: int,
                     request: str) -> int:
    """Rejected candidates in a row of a rejection sampler after one more batch of `tried`
    candidates of which `accepted` were kept. Raises DataError naming `request` (the filter,
    as its flags) once `limit` candidates in a row were rejected: a filter that (almost) no
    candidate meets stops with an error instead of looping forever."""
    in_a_row = 0 if accepted else in_a_row + tried
    if in_a_row >= limit:
        raise DataError(f"{in_a_row} generated candidates in a row were rejected: (almost) none "
                        f"meets {request}; relax it")
    return in_a_row


def require_file(path: Path) -> None:
    """DataError naming `path` unless it is a file (missing, or a directory)."""
    if not path.is_file():
        raise DataError(f"{path}: is a directory, not a file" if path.is_dir()
                        else f"{path}: file not found")


def read_json(path: Path) -> Any:
    """Parse a UTF-8 JSON file (a byte-order mark allowed, as in CSVs); a missing or
    malformed file raises DataError naming it."""
    require_file(path)
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


def check_output_file(out: str | os.PathLike[str]) -> None:
    """DataError when the local path `out` cannot become a file: it is a directory, or its
    directory (the nearest one that exists) cannot be written. Commands call it on every output
    before their work starts, so that nothing is half-written."""
    if is_url(out):
        return
    if Path(out).is_dir() or str(out).endswith(("/", os.sep)):
        raise DataError(f"{out} is a directory; give a file path")
    check_can_write_in(Path(out).parent, name=out)


def check_can_write_in(directory: str | os.PathLike[str], name: object = None) -> None:
    """DataError (naming `name`, default the directory) unless files can be created in the
    local `directory`, or, where it does not exist yet, in its nearest existing parent."""
    directory = Path(directory).absolute()
    place = next(p for p in (directory, *directory.parents) if p.exists())
    name = directory if name is None else name
    if not place.is_dir():
        raise DataError(f"cannot write {name}: {place} is a file")
    if not os.access(place, os.W_OK | os.X_OK):
        raise DataError(f"cannot write {name}: {place} is not writable"
                        f"{' (read-only file system)' if _read_only_fs(place) else ''}")
    try:  # what os.access cannot tell (root, /proc, some mounts): a probe file, removed again
        probe_write(directory, name=f".trm-write-probe-{os.getpid()}")
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        raise DataError(f"cannot write {name}: {e.strerror or e}{where}") from None


def _read_only_fs(path: Path) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def check_output_dir(out: str | os.PathLike[str]) -> None:
    """DataError when writing a data set to `out` would destroy something else: `out` is a
    file, or a non-empty directory that holds no data set (no metadata.json); or when its
    directory cannot be written. A data set there is replaced."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file; give a directory for the data set")
    check_can_write_in(out.parent, name=out)
    if out.is_dir() and any(out.iterdir()) and not (out / "metadata.json").is_file():
        raise DataError(f"{out} is not empty and holds no data set: writing the data set there "
                        "would delete its files; give a new or empty directory")


@contextlib.contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory next to `out`; on success it replaces `out`.

    On any exception the temporary directory is removed and `out` is left as it was. `out`
    must be new, empty or a data set (DataError otherwise, see `check_output_dir`).
    """
    out = Path(out)
    check_output_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = scratch_dir(out, "tmp")
    tmp.chmod(0o755)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = scratch_dir(out, "old")
        os.replace(out, old / out.name)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(out: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `out`; on success it is renamed to `out`.

    `out` may be a URL (`data.storage`): the file is written locally, then uploaded in one
    piece on success (an object store shows a whole object or none). DataError when `out`
    is a directory (before anything is written) or cannot be written."""
    if is_url(out):
        with tempfile.TemporaryDirectory(prefix="trm-upload-") as d:
            tmp = Path(d) / as_path(out).name
            yield tmp
            dest = as_path(out)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(tmp.read_bytes())
        return
    out = Path(out)
    check_output_file(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    except OSError as e:
        raise DataError(f"cannot write {out}: {e.strerror or e}") from None
    os.close(fd)
    tmp = Path(name)
    tmp.chmod(0o644)
    try:
        yield tmp
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is not None and Path(e.filename) == tmp:
            raise DataError(f"cannot write {out}: {e.strerror or e}") from None  # a full disk
        raise
    try:
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"cannot write {out}: {e.strerror or e}") from None
