"""Local paths and URLs: outputs, checkpoints and data sets may live on storage every host
sees (`gs://bucket/dir`, `s3://...`: whatever `etils.epath`, the path library orbax uses,
can open; `gs://` needs the `gcsfs` package).

Data sets are read from a local directory: a URL is copied once into a local cache
(`$TRM_DATA_CACHE`, default `~/.cache/trm/datasets`) and read from there; the copy is
refreshed when the remote `metadata.json` changes.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import shutil
import socket
import tempfile
from pathlib import Path

from etils import epath


def is_url(path: str | os.PathLike[str]) -> bool:
    """True for `scheme://...` (gs://, s3://, ...), False for local paths."""
    return "://" in os.fspath(path)


def as_path(path: str | os.PathLike[str]) -> epath.Path:
    """A pathlib-like path for a local path or a URL (`Path("gs://b/x")` would lose the //).

    Raises ValueError (one line) for a URL whose file system is unknown or needs a package
    that is not installed (`gs://` without `gcsfs`)."""
    if is_url(path):
        _require_backend(os.fspath(path))
    return epath.Path(path)


def scratch_dir(out: Path, kind: str) -> Path:
    """A new hidden directory next to `out` for work on it, named
    `.<out name>.<kind>-<host>-<pid>-XXXXXXXX`; the caller removes it. First removes the
    directories of that kind a process of this host left there when it died without cleaning
    up (kill -9, the OOM killer; a dead pid; other hosts' are left alone)."""
    prefix = f".{out.name}.{kind}-{socket.gethostname()}-"
    for left in Path(out.parent).glob(glob.escape(prefix) + "*"):
        pid = left.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(left, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=out.parent))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def first_unreadable(directory: str | os.PathLike[str]) -> str | None:
    """The first file or folder under a local `directory` (itself included) that this process
    may not read (or, a folder, enter), else None; None for a URL. For errors that hide a
    permission problem (orbax reports an unreadable checkpoint as a tree type mismatch)."""
    if is_url(str(directory)):
        return None
    for root, dirs, files in os.walk(directory, onerror=lambda e: None):
        for path in [root, *(os.path.join(root, n) for n in dirs + files)]:
            mode = os.R_OK | (os.X_OK if os.path.isdir(path) else 0)
            if not os.access(path, mode):
                return path
    return None


def probe_write(directory: str | os.PathLike[str], *, name: str = ".trm-write-probe",
                tidy: bool = True) -> None:
    """Create `directory` (a local path or a URL) and its missing parents, write and remove a
    probe file `name` in it; with `tidy`, remove again the local directories it created (a
    command stopped by a later check leaves nothing). Raises OSError where any of it fails:
    permissions, read-only or pseudo file systems (/proc), a file in the way, a full disk."""
    created = [] if is_url(directory) or not tidy else [
        p for p in (Path(directory).absolute(), *Path(directory).absolute().parents)
        if not p.exists()]
    d = as_path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(b"probe")
        (d / name).unlink()
    finally:
        for p in created:  # deepest first
            with contextlib.suppress(OSError):
                p.rmdir()


def _require_backend(url: str) -> None:
    import fsspec  # etils.epath opens URLs through fsspec
    from etils.epath import register

    scheme = url.split("://", 1)[0]
    known = sorted(register._URI_PREFIXES_TO_CLS)  # etils has no public list
    if f"{scheme}://" not in known:
        raise ValueError(f"{url}: unsupported storage scheme {scheme}:// (supported: "
                         f"{', '.join(known)}; give a local path without file://)")
    try:
        fsspec.get_filesystem_class(scheme)
    except ImportError as e:  # e.g. "Please install gcsfs to access Google Storage"
        raise ValueError(f"{url}: {e}") from None
    except ValueError:
        raise ValueError(f"{url}: unknown storage scheme {scheme}://") from None


def cache_root() -> Path:
    return Path(os.environ.get("TRM_DATA_CACHE") or Path.home() / ".cache/trm/datasets")


def local_copy(path: str | os.PathLike[str]) -> Path:
    """A local directory with the contents of data set `path` (itself when local)."""
    if not is_url(path):
        return Path(path)
    src = as_path(path)
    meta = src / "metadata.json"
    if not meta.exists():
        raise FileNotFoundError(f"{path}: not a built data set (no metadata.json)")
    digest = hashlib.sha256(os.fspath(path).rstrip("/").encode()).hexdigest()[:16]
    dest = cache_root() / f"{src.name}-{digest}"
    wanted = meta.read_bytes()
    if (dest / "metadata.json").is_file() and (dest / "metadata.json").read_bytes() == wanted:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = scratch_dir(dest, "tmp")
    try:
        _copy_tree(src, tmp)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (dest / "metadata.json").is_file():  # another process on this host won
            raise
    return dest


def _copy_tree(src: epath.Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.is_dir():
            _copy_tree(item, dst / item.name)
        else:
            (dst / item.name).write_bytes(item.read_bytes())
