"""Quieting orbax and tensorstore: each checkpoint fault is reported by `trm.checkpoint` as
one line, and this module keeps their own logging of the same fault (tracebacks, asyncio
records, unraisable errors) out of the terminal. Importing it installs the filters."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from typing import Any

_TENSORSTORE_ERROR = re.compile(r"\b[A-Z_]+: Error (reading|writing|opening) ")
"""tensorstore's status text ('OUT_OF_RANGE: Error reading "x" in OCDBT database ...'): its
futures fail in C++, so their exceptions carry no Python frame to recognise them by."""


def _from_orbax(record: logging.LogRecord) -> bool:
    """A log record that orbax or tensorstore raised or logged."""
    if "orbax" in record.pathname:
        return True
    if _TENSORSTORE_ERROR.search(record.getMessage()) or (
            record.exc_info and _TENSORSTORE_ERROR.search(str(record.exc_info[1]))):
        return True
    tb = record.exc_info[2] if record.exc_info else None
    while tb is not None:
        if any(m in tb.tb_frame.f_code.co_filename for m in ("orbax", "tensorstore")):
            return True
        tb = tb.tb_next
    return False


# Noise next to the one line `trm.checkpoint` reports for each fault: orbax logs a failed
# background write with its traceback before `Checkpointer` re-raises it as SaveFailed; it
# warns about a step without its metadata file (read anyway, or reported unusable) and
# that a reader's manager is read-only (as asked); the reads of a step found unusable leave
# tasks and futures whose exceptions asyncio logs when they are collected, at any later
# time (hundreds of lines); abandoned coroutines warn at exit.
# and a multi-host preemption stop, which `trm.run_checkpoints.save_before_stopping` reports.
_ORBAX_NOISE = ("Metadata file does not exist", "read_only=True", "Given directory is read only",
                "Reached preemption sync point", "did not provide metrics")
logging.getLogger("absl").addFilter(lambda r: not (_from_orbax(r) and (
    r.levelno >= logging.ERROR or any(m in r.getMessage() for m in _ORBAX_NOISE))))
logging.getLogger("asyncio").addFilter(lambda r: not (
    "exception was never retrieved" in r.getMessage() and _from_orbax(r)))
warnings.filterwarnings("ignore", message="coroutine .* was never awaited",
                        category=RuntimeWarning)


def _orbax_noise(args: Any) -> bool:
    """An unraisable error left behind by a failed orbax read or write, already reported as
    one line: tensorstore callbacks into orbax's closed event loop, or orbax coroutines that
    failed and were never awaited."""
    code = getattr(args.object, "cr_code", None)
    return ((args.exc_type is RuntimeError and str(args.exc_value) == "Event loop is closed")
            or (code is not None and "orbax" in code.co_filename))


def _without_orbax_noise(hook: Callable[[Any], None]) -> Callable[[Any], None]:
    def unraisablehook(args: Any) -> None:
        if not _orbax_noise(args):
            hook(args)
    return unraisablehook


sys.unraisablehook = _without_orbax_noise(sys.unraisablehook)


@contextlib.contextmanager
def stderr_kept_on_success() -> Iterator[None]:
    """Capture file descriptor 2 (orbax/tensorstore print tracebacks of a failed read from
    their threads); replay it if the block succeeds, drop it if it raises."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        ok = False
        try:
            yield
            ok = True
        finally:
            gc.collect()  # coroutines of a failed read report themselves when collected
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if ok:
                sink.seek(0)
                sys.stderr.write(sink.read().decode(errors="replace"))
