"""The schema engine: plain YAML data checked into typed dataclasses, one error shape for all.

Run configs, sweep specs and job specs are all nested dataclasses whose fields carry their own
one-line docs. This module knows nothing of any of them: it refuses unknown keys, coerces each
value to its field's annotation, and raises ``ConfigError`` naming the dotted key, so every
kind of file fails the same way (``<file>: <key>: got X; allowed ...``) before Ray is touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import field
from typing import Any

UNKNOWN_KEY = "got unknown key; allowed keys: "


class ConfigError(ValueError):
    """A key or value a user has to fix; says which key and, once known, in which file.

    ``str()`` is ``<key>: <message>`` (what tests and library callers match); ``file`` is filled
    in by whoever read the file, and ``located()`` is the one line the CLI prints.
    """

    def __init__(self, message: str, key: str | None = None, file: str | None = None) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.message = message
        self.key = key
        self.file = file

    def at(self, file: str | None) -> ConfigError:
        """Names the file the key was read from, unless a deeper reader already did."""
        if self.file is None:
            self.file = file
        return self

    def as_kind(self, kind: type[ConfigError]) -> ConfigError:
        """This error as ``kind`` (a spec's own subclass), so callers catch one class."""
        return self if isinstance(self, kind) else kind(self.message, self.key, self.file)

    def located(self) -> str:
        return f"{self.file}: {self}" if self.file else str(self)


def doc(text: str, **kwargs: Any) -> Any:
    """A dataclass field whose one-line description travels with it (``config keys``,
    ``config docs``): the reference is generated from these, never written by hand."""
    return field(metadata={"doc": text}, **kwargs)


def require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(message, key)


def choice(value: Any, key: str, allowed: Iterable[Any]) -> None:
    allowed = list(allowed)
    require(value in allowed, key, f"got {value!r}; allowed values are {allowed}")


def refuse_unknown(keys: Iterable[str], allowed: Iterable[str], prefix: str = "") -> None:
    """The one unknown-key refusal: the first unknown key, dotted, and every allowed one."""
    allowed = list(allowed)
    unknown = sorted(set(keys) - set(allowed))
    if unknown:
        raise ConfigError(UNKNOWN_KEY + ", ".join(allowed), join(prefix, unknown[0]))


def join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _wrong(value: Any, key: str, allowed: str) -> ConfigError:
    return ConfigError(f"got {value!r}; allowed: {allowed}", key)


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Checks a YAML value against a field's annotation; ints widen to floats, nothing else."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if is_dataclass_type(tp):
        return build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, typing.get_args(tp), key)
    if origin is list:
        (item_type,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise _wrong(value, key, "a list")
        return [coerce(item, item_type, f"{key}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        _, value_type = typing.get_args(tp)
        if not isinstance(value, dict):
            raise _wrong(value, key, "a mapping")
        return {str(k): coerce(v, value_type, join(key, str(k))) for k, v in value.items()}
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _wrong(value, key, "a number")
        return float(value)
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _wrong(value, key, "an integer")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise _wrong(value, key, "true or false")
        return value
    if tp is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise _wrong(value, key, "a string")
        return str(value)
    raise ConfigError(f"unsupported field type {tp!r}", key)


def _coerce_union(value: Any, options: tuple[Any, ...], key: str) -> Any:
    if value is None and type(None) in options:
        return None
    errors = []
    for option in options:
        if option is type(None):
            continue
        try:
            return coerce(value, option, key)
        except ConfigError as exc:
            errors.append(exc)
    raise errors[0]


def build(cls: type, data: Any, prefix: str = "") -> Any:
    """``cls`` built from a mapping: unknown keys refused, every value coerced, then the
    class's own ``__post_init__`` checks. A class may list keys it renamed in ``RENAMED``
    (old leaf name -> new dotted key) so an old file fails naming the new key."""
    if not isinstance(data, dict):
        raise _wrong(data, prefix or "top level", "a mapping")
    names = [f.name for f in dataclasses.fields(cls)]
    renamed: Mapping[str, str] = getattr(cls, "RENAMED", {})
    moved = sorted(set(data) & set(renamed))
    if moved:
        new = renamed[moved[0]]
        raise ConfigError(
            f"got a moved key; it is now {new}; write {new}=... "
            f"(in YAML: {new.replace('.', ': ', 1)})",
            join(prefix, moved[0]),
        )
    refuse_unknown(data, names, prefix)
    hints = typing.get_type_hints(cls)
    kwargs = {name: coerce(value, hints[name], join(prefix, name)) for name, value in data.items()}
    return cls(**kwargs)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` laid over ``base``, nested mappings merged key by key."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def describe_fields(cls: type, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, description) for every leaf field, for help output."""
    return [(key, f.metadata.get("doc", "")) for key, f, _ in leaf_fields(cls, prefix)]


def leaf_fields(cls: type, prefix: str = "") -> list[tuple[str, dataclasses.Field, Any]]:
    """(dotted key, field, annotation) of every leaf, nested dataclasses walked in order."""
    rows: list[tuple[str, dataclasses.Field, Any]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = join(prefix, f.name)
        if is_dataclass_type(hints[f.name]):
            rows.extend(leaf_fields(hints[f.name], key))
        else:
            rows.append((key, f, hints[f.name]))
    return rows
