"""Dotted overrides (``train.max_steps=50``) turned into the nested mapping a file would hold.

They are merged over the YAML before the schema engine checks the whole, so an override is
held to exactly the rules a file is; errors here name ``<command line>`` as their file.
"""

from __future__ import annotations

import typing
from typing import Any

import yaml

from mmpretrain.config.schema import ConfigError

COMMAND_LINE = "<command line>"


def parse_overrides(overrides: typing.Sequence[str]) -> dict[str, Any]:
    """Turns ``a.b=1`` strings into a nested dict; values are parsed as YAML scalars/lists."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value", file=COMMAND_LINE)
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else "", item)
    return tree


def dotted_tree(values: typing.Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}``, values kept as they are (not parsed as text)."""
    tree: dict[str, Any] = {}
    for key, value in values.items():
        _set_dotted(tree, key, value, key)
    return tree


def _set_dotted(tree: dict[str, Any], key: str, value: Any, item: str) -> None:
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r} has an empty key part", file=COMMAND_LINE)
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(
                f"override {item!r} conflicts with an earlier override", file=COMMAND_LINE
            )
    node[parts[-1]] = value


def override_keys(tree: dict[str, Any], prefix: str = "") -> set[str]:
    """Every dotted key, leaves and sections, that ``tree`` sets."""
    keys: set[str] = set()
    for name, value in tree.items():
        key = f"{prefix}.{name}" if prefix else name
        keys.add(key)
        if isinstance(value, dict):
            keys |= override_keys(value, key)
    return keys
