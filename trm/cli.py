"""Shared command-line behaviour: readable one-line errors and non-zero exit codes."""

from __future__ import annotations

import dataclasses
import sys
import typing
from collections.abc import Callable
from typing import TypeVar

from data.common import DataError
from trm.config import ConfigError, flag_error

T = TypeVar("T")


def warn(lines: list[str]) -> None:
    """Print each line as `warning: ...` on stderr (once: on the first process)."""
    import jax  # imported here: keeps this module light for --help

    if jax.process_index() == 0:
        for line in lines:
            print(f"warning: {line}", file=sys.stderr)


def positive_int(text: str) -> int:
    """argparse `type=` for counts and sizes: an int >= 1 (argparse prints its error)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


class RunStopped(RuntimeError):
    """A run stopped on purpose (e.g. a non-finite loss): one line, exit status 1."""


class RunFailed(RuntimeError):
    """The environment failed the run (e.g. a checkpoint could not be written): one
    `error:` line, exit status 1."""


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


def run_cli(main: Callable[[list[str]], object], argv: list[str]) -> int:
    """Run `main(argv)`; bad input (ValueError, missing files) prints `error: ...` and exits 2,
    a deliberate stop (RunStopped) or a failure of the environment (RunFailed) exits 1."""
    try:
        main(argv)
    except (ConfigError, DataError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunStopped as e:
        print(f"stopped: {e}", file=sys.stderr)
        return 1
    except RunFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
