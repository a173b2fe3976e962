"""Generic helpers on nested frozen dataclass configs: dotted paths, overrides, diffs, and the
tyro flags that reproduce a config from a preset.

Paths name a leaf field by its attribute chain: `"model.hidden_size"`, `"optim.lr"`.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def get_path(cfg: Any, path: str) -> Any:
    """The value at a dotted path (`"model.hidden_size"`)."""
    for part in path.split("."):
        if not dataclasses.is_dataclass(cfg) or not hasattr(cfg, part):
            raise KeyError(f"no config field {path!r}")
        cfg = getattr(cfg, part)
    return cfg


def override(cfg: T, overrides: Mapping[str, Any]) -> T:
    """A copy of `cfg` with each dotted path set (dataclasses.replace, nested; validated)."""
    nested: dict[str, dict[str, Any]] = {}
    direct: dict[str, Any] = {}
    for path, value in overrides.items():
        head, _, rest = path.partition(".")
        if not dataclasses.is_dataclass(cfg) or head not in {f.name for f in
                                                             dataclasses.fields(cfg)}:
            raise KeyError(f"no config field {head!r} in {type(cfg).__name__} (path {path!r})")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    for head, sub in nested.items():
        if head in direct:
            raise KeyError(f"{head!r} is set both as a whole and field by field")
        direct[head] = override(getattr(cfg, head), sub)
    return dataclasses.replace(cfg, **direct) if direct else cfg


def leaves(cfg: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, value) of every non-dataclass field, in declaration order."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from leaves(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value


def diff(base: Any, other: Any) -> dict[str, tuple[Any, Any]]:
    """Dotted path -> (base value, other value) for every leaf that differs."""
    a, b = dict(leaves(base)), dict(leaves(other))
    return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


# --------------------------------------------------------------------------------------------
# tyro flags

@functools.cache
def _field_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _flag_name(cfg: Any, path: str) -> tuple[str, bool]:
    """(flag name without dashes, whether it is a bool flag) as tyro spells it."""
    parts = path.split(".")
    owner = get_path(cfg, ".".join(parts[:-1])) if len(parts) > 1 else cfg
    hint = _field_hints(type(owner))[parts[-1]]
    prefixed, name = True, parts[-1]
    for meta in getattr(hint, "__metadata__", ()):
        if getattr(meta, "prefix_name", None) is False:
            prefixed = False
        if isinstance(getattr(meta, "name", None), str):
            name = meta.name
    base = typing.get_args(hint)[0] if hasattr(hint, "__metadata__") else hint
    name = name.replace("_", "-")
    prefix = ".".join(parts[:-1])
    return (f"{prefix}.{name}" if prefixed and prefix else name), base is bool


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, (tuple, list)):
        return [x for v in value for x in _flatten(v)]
    return [value]


def _token(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def tyro_flags(preset: Any, cfg: Any) -> list[str]:
    """Flags that turn `preset` into `cfg` on a tyro command line (`--model.hidden-size 256`).

    Bools become `--x` / `--no-x`, None becomes `None`, tuples (nested ones flattened) their
    elements, an empty tuple a bare flag. Tests parse every catalog entry back with tyro.
    """
    flags: list[str] = []
    for path, (_, value) in diff(preset, cfg).items():
        name, is_bool = _flag_name(cfg, path)
        if is_bool:
            head, _, last = name.rpartition(".")
            flags.append(f"--{name}" if value else f"--{head + '.' if head else ''}no-{last}")
        else:
            flags += [f"--{name}", *(_token(v) for v in _flatten(value))]
    return flags
