"""A pretrained BERT folder decides the text tower's shape.

``model.text.pretrained``'s config.json sets the sizes the user did not set themselves; a size
they did set must agree with it. Read with json alone: importing transformers to read six
numbers would cost seconds in every command that loads a config.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

from mmpretrain.config.run import FusionConfig, TextConfig
from mmpretrain.config.schema import ConfigError, merge, require
from mmpretrain.storage import is_uri

# model.text.* key -> the BERT config.json field that decides it (what a pretrained folder sets)
BERT_SHAPE_FIELDS = {
    "hidden_size": "hidden_size",
    "layers": "num_hidden_layers",
    "heads": "num_attention_heads",
    "intermediate_size": "intermediate_size",
    "max_positions": "max_position_embeddings",
}


def check_text_matches_bert(text: TextConfig, bert_config: typing.Mapping[str, Any]) -> None:
    """Every size model.text sets equals the pretrained folder's config.json; the driver's
    preflight and the text encoder's own last guard both ask this."""
    for key, hf_name in BERT_SHAPE_FIELDS.items():
        ours, theirs = getattr(text, key), bert_config.get(hf_name)
        if ours is not None and ours != theirs:
            raise ConfigError(
                f"model.text.{key}={ours} but {text.pretrained!r} has {hf_name}={theirs}; drop "
                f"model.text.{key} to take the folder's value"
            )


def read_bert_config(folder: str | Path) -> dict[str, Any] | None:
    """A pretrained folder's config.json, or None when the folder has none.

    Read with json alone: importing transformers to read six numbers would cost seconds in
    every command that loads a config.
    """
    path = Path(folder).expanduser() / "config.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {str(path)!r}: {exc}", "model.text.pretrained") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{str(path)!r} does not hold a JSON object", "model.text.pretrained")
    return data


def _subtree(data: Any, *keys: str) -> dict[str, Any]:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data if isinstance(data, dict) else {}


def adopt_pretrained_text_shape(data: dict[str, Any], chosen: dict[str, Any]) -> dict[str, Any]:
    """``data`` with model.text's sizes taken from model.text.pretrained's config.json.

    ``chosen`` holds what the user set themselves; a size there that disagrees with the folder
    is an error naming both, never silently replaced. A folder without config.json is left to
    the driver's checks (train/preflight.py): evaluating or exporting a finished run does not
    read the folder, so it need not exist any more.
    """
    text = _subtree(data, "model", "text")
    folder = text.get("pretrained")
    if not isinstance(folder, str) or not folder or is_uri(folder):
        return data
    hf_config = read_bert_config(folder)
    if hf_config is None:
        return data
    yours = _subtree(chosen, "model", "text")
    adopted: dict[str, Any] = {}
    for key, hf_name in BERT_SHAPE_FIELDS.items():
        theirs = hf_config.get(hf_name)
        if not isinstance(theirs, int) or isinstance(theirs, bool):
            continue
        mine = yours.get(key)
        if mine is not None and mine != theirs:
            raise ConfigError(  # keyed, so the error names the file or command line that set it
                f"got {mine}; allowed: {theirs}, the {hf_name} of model.text.pretrained "
                f"{folder!r} (or drop model.text.{key} to take the folder's value)",
                f"model.text.{key}",
            )
        adopted[key] = theirs
    fusion = _subtree(data, "model", "fusion")
    heads = fusion.get("heads", FusionConfig.__dataclass_fields__["heads"].default)
    hidden = adopted.get("hidden_size")
    if fusion.get("width") is None and isinstance(heads, int) and isinstance(hidden, int):
        require(
            heads >= 1 and hidden % heads == 0,
            "model.fusion.heads",
            f"{heads} heads must divide the fusion width, which is the text hidden size "
            f"{hidden} of model.text.pretrained {folder!r} (model.fusion.width is null); "
            "set model.fusion.heads to a divisor of it, or set model.fusion.width",
        )
    return merge(data, {"model": {"text": adopted}})
