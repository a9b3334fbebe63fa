"""Loading a run config: defaults, then a YAML preset or file, then dotted overrides.

Where each value came from is only known here, so this is where an error learns its file
(the YAML, or ``<command line>`` for an override) and where a pretrained BERT folder's shape
is adopted.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import yaml

from mmpretrain.config.bert import adopt_pretrained_text_shape
from mmpretrain.config.overrides import COMMAND_LINE, dotted_tree, override_keys, parse_overrides
from mmpretrain.config.run import RunConfig
from mmpretrain.config.schema import ConfigError, build, merge

PRESET_DIR = Path(__file__).parents[1] / "configs"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(source: str | Path) -> Path:
    """The YAML file a ``--config`` value names: a shipped preset's, or the path itself."""
    path = Path(source)
    if path.suffix:
        return path
    if str(source) not in preset_names():
        raise ConfigError(
            f"no preset named {str(source)!r}; presets are {preset_names()} or give a path "
            "to a YAML file",
            "--config",
        )
    return PRESET_DIR / f"{source}.yaml"


def read_yaml_mapping(
    path: Path, what: str, error: type[ConfigError] = ConfigError, text: str | None = None
) -> dict[str, Any]:
    """A YAML file (or ``text`` read from it earlier) that must hold a mapping: a config, a
    sweep spec, a job spec. ``error`` is the kind of ConfigError the caller's callers catch."""
    if text is None:
        if not path.is_file():
            raise error(f"{what} {str(path)!r} does not exist")
        text = path.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise error(f"not valid YAML: {exc}".replace("\n", " "), file=str(path)) from exc
    if not isinstance(data, dict):
        raise error(f"got {data!r}; allowed: a mapping at the top level", file=str(path))
    return data


def load_config(
    source: str | Path | None = "tiny",
    overrides: typing.Sequence[str] = (),
    values: typing.Mapping[str, Any] | None = None,
) -> RunConfig:
    """Builds a validated ``RunConfig`` from a preset name or YAML path plus dotted overrides.

    ``values``: dotted keys with Python values, applied after ``overrides`` (a sweep's trial
    values: typed already, so ``1e-08`` stays a float instead of YAML's string).

    With ``model.text.pretrained`` set, the folder's config.json sets the text tower's shape:
    a shipped preset's sizes (or the defaults) give way to it, while a size the user wrote
    (their own YAML file or an override) must agree with it.
    """
    path = preset_path(source) if source is not None else None
    data = read_yaml_mapping(path, "--config: file") if path is not None else {}
    override_tree = merge(parse_overrides(overrides), dotted_tree(values or {}))
    data = merge(data, override_tree)
    chosen = override_tree if source is None or _is_shipped_preset(source) else data
    try:
        return build(RunConfig, adopt_pretrained_text_shape(data, chosen))
    except ConfigError as exc:
        from_command_line = exc.key is not None and exc.key in override_keys(override_tree)
        raise exc.at(COMMAND_LINE if from_command_line or path is None else str(path)) from None


def _is_shipped_preset(source: str | Path) -> bool:
    path = Path(source)
    if not path.suffix:
        return True  # a preset name; preset_path has refused anything else
    return path.resolve().parent == PRESET_DIR.resolve()


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Rebuilds a config shipped to Ray workers or saved in a run directory."""
    return build(RunConfig, data)
