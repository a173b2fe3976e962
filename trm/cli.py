"""Shared command-line behaviour: readable one-line errors and non-zero exit codes."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import os
import signal
import sys
import threading
import typing
from collections.abc import Callable, Iterator
from typing import NoReturn, TypeVar

from data.common import DataError
from trm.config import ConfigError, flag_error

T = TypeVar("T")


def warn(lines: list[str], kind: str = "warning") -> None:
    """Print each line as `<kind>: ...` on stderr (once: on the first process)."""
    import jax  # imported here: keeps this module light for --help

    if jax.process_index() == 0:
        for line in lines:
            print(f"{kind}: {line}", file=sys.stderr)


def int_at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """argparse `type=`: an int >= `minimum` (and <= `maximum`; argparse prints its error,
    naming the flag)."""
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if maximum is not None and not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be in {minimum}..{maximum}, got {value}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def argument_parser(**kwargs: object) -> argparse.ArgumentParser:
    """An argparse parser whose usage errors are one line, `error: ... (see PROG --help)`, exit
    status 2, as every other bad input of our commands (argparse prints its usage block
    first); its subcommands' parsers do the same."""
    class OneLineErrors(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")

    return OneLineErrors(**kwargs)  # type: ignore[arg-type]


positive_int = int_at_least(1)
"""argparse `type=` for counts and sizes: an int >= 1."""
non_negative_int = int_at_least(0)
"""argparse `type=` for seeds (NumPy's generators take no negative seed)."""


class RunStopped(RuntimeError):
    """A run stopped on purpose (e.g. a non-finite loss): one line, exit status 1."""


class RunFailed(RuntimeError):
    """The environment failed the run (e.g. a checkpoint could not be written): one
    `error:` line, exit status 1."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or `kill`'s stop), raised like Ctrl-C so the same clean-up runs:
    temporary files removed, child processes stopped, a checkpoint being saved finished."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises Terminated in the main thread; the previous handler is
    restored after (off the main thread, where Python cannot set handlers, it does nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> NoReturn:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def sigterm_deferred() -> Iterator[None]:
    """Within the block a SIGTERM is held back and raised as Terminated when the block ends, so
    that what the block updates together (a train step's state and the data iterator's
    position) is never left half-updated; outside the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
    if received:
        raise Terminated


def interrupted(e: KeyboardInterrupt, detail: str = "") -> int:
    """Print `interrupted` / `terminated` (+ detail) on stderr; the exit status: 130 for
    SIGINT, 143 for SIGTERM (128 + the signal number, as the shell reports them)."""
    print(("terminated" if isinstance(e, Terminated) else "interrupted") + detail,
          file=sys.stderr)
    return 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)


BLOCKING_THREAD = "blocked-in-jax"
"""Name of a helper thread running a C++ call that may never return (`trm.preflight`)."""


def exit_process(code: int) -> NoReturn:
    """End the process with `code`. After an interrupt (130, 143), or with a helper thread
    still blocked in C++ (BLOCKING_THREAD), the interpreter's own shutdown is skipped: XLA work
    still in flight can crash it (segfaults, `pure virtual method called`), a blocked thread
    hang it. Files and checkpoints are closed by then."""
    blocked = any(t.name == BLOCKING_THREAD and t.is_alive() for t in threading.enumerate())
    if code in (128 + signal.SIGINT, 128 + signal.SIGTERM) or blocked:
        gc.collect()  # what the stop left unreachable (a worker pool's semaphores) is released
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def parse_args(cls: type[T], args: list[str], prog: str) -> T:
    """tyro.cli for a dataclass (fields, and nested dataclasses one level deep); a ConfigError
    names the flag (`--batch-size ...`, `--mesh.data ...`)."""
    import tyro  # imported here: keeps --help of other tools fast

    hints = typing.get_type_hints(cls)
    nested = {hints[f.name]: f"{f.name}." for f in dataclasses.fields(cls)
              if dataclasses.is_dataclass(hints[f.name])}  # e.g. --mesh.data
    try:
        return tyro.cli(cls, args=args, prog=prog)
    except ConfigError as e:
        raise flag_error(e, {c: "" for c in cls.__mro__} | nested) from None


def reader_gone() -> int:
    """After BrokenPipeError (the output piped into `head`, which has exited): send what is
    still buffered nowhere, so that the interpreter's exit prints nothing; the exit status of
    a process killed by SIGPIPE (141)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 128 + signal.SIGPIPE


def run_cli(main: Callable[[list[str]], object], argv: list[str]) -> int:
    """Run `main(argv)`; bad input (ValueError, missing files) prints `error: ...` and exits 2,
    a deliberate stop (RunStopped), a failure of the environment (RunFailed, OSError) or
    XLA running out of memory exits 1, Ctrl-C
    130 (`interrupted`) and SIGTERM 143 (`terminated`); output piped into a reader that
    has exited (`| head`) ends quietly with 141."""
    try:
        with sigterm_as_interrupt():
            main(argv)
            sys.stdout.flush()
    except BrokenPipeError:
        return reader_gone()
    except (ConfigError, DataError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunStopped as e:
        print(f"stopped: {e}", file=sys.stderr)
        return 1
    except RunFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # the environment: a read-only or full disk, a permission
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        return interrupted(e)
    except RuntimeError as e:
        if not is_out_of_memory(e):
            raise
        print(f"error: {out_of_memory_line(e)}", file=sys.stderr)
        return 1
    return 0


def is_out_of_memory(e: BaseException) -> bool:
    """Whether `e` is XLA failing to allocate device (or host) memory."""
    return type(e).__name__ in ("JaxRuntimeError", "XlaRuntimeError") and str(e).startswith(
        "RESOURCE_EXHAUSTED")


def out_of_memory_line(e: BaseException) -> str:
    """One line for an out-of-memory error: XLA's first line, the size in GiB, what to lower."""
    import re

    first = str(e).splitlines()[0].removeprefix("RESOURCE_EXHAUSTED: ").rstrip(".")
    size = re.search(r"allocating (\d+) bytes", first)
    gib = f" ({int(size.group(1)) / 2**30:.1f} GiB)" if size else ""
    return (f"out of memory: {first}{gib}; use a smaller batch (train.py "
            "--optim.global-batch-size / --eval.batch-size, evaluate.py --batch-size) or model, "
            "or more devices")


def os_error_line(e: OSError) -> str:
    """'PATH: reason' (or the reason alone) for an OSError."""
    reason = e.strerror or str(e)
    return f"{e.filename}: {reason}" if e.filename is not None else reason


def short_reason(e: BaseException, limit: int = 160) -> str:
    """One line from any exception: the type and first message line of its root cause, cut."""
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    line = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return line if len(line) <= limit else line[:limit - 3] + "..."
