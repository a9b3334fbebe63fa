"""Everything checked or prepared on the driver before the first Ray call.

A wrong local path found here costs seconds; found inside a Ray worker it costs a cluster
start-up and a worker group that Ray Train may restart. ``prepare_run`` also resolves an empty
``data.tokenizer`` (the pretrained folder's own tokenizer, or one trained on the training
captions into the run directory), so the config the workers receive, and the run directory
saves for ``eval`` and ``export``, names the tokenizer actually used.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmpretrain.config import (
    ConfigError,
    DataConfig,
    RunConfig,
    VisionConfig,
    check_text_matches_bert,
    read_bert_config,
)
from mmpretrain.console import console
from mmpretrain.data.pipeline import training_shards
from mmpretrain.data.shards import expand_shards
from mmpretrain.data.tokenizer import iter_captions, load_tokenizer, train_tokenizer_on
from mmpretrain.data.transforms import UnusableSampleError, extract_caption
from mmpretrain.model.vision import build_resnet, read_resnet_state
from mmpretrain.storage import is_uri

RUN_TOKENIZER = "tokenizer"  # where a run keeps the tokenizer trained for it, in its directory
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")  # either makes a folder a tokenizer
BERT_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"  # "bert."-prefixed in *ForMaskedLM files


@dataclass(frozen=True)
class PreparedRun:
    cfg: RunConfig  # absolute paths, data.tokenizer resolved
    train_shards: list[str]  # data.train's, or data.sources' mixed by weight
    val_shards: list[str] | None


def prepare_run(cfg: RunConfig) -> PreparedRun:
    """The config to train with, absolute paths and data.tokenizer resolved, every local file
    it names checked, and the shards listed; raises ``ConfigError`` naming the key to fix."""
    cfg.check_runnable()
    cfg = cfg.with_absolute_paths()  # workers do not share the driver's working directory
    train_shards = training_shards(cfg.data, cfg.train.seed)  # bad patterns fail here
    val_shards = expand_shards(cfg.data.val) if cfg.data.val else None
    bert_config = check_pretrained_text(cfg) if cfg.model.text.pretrained else None
    check_text_positions(cfg, bert_config)
    if cfg.model.vision.weights:
        check_vision_weights(cfg.model.vision)
    cfg = resolve_tokenizer(cfg, train_shards)  # last: training one may take a while
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    if bert_config is not None:
        check_vocabulary(cfg, bert_config, tokenizer.vocab_size)
    return PreparedRun(cfg, train_shards, val_shards)


# ---------------------------------------------------------------------------------------------
# The tokenizer
# ---------------------------------------------------------------------------------------------


def resolve_tokenizer(cfg: RunConfig, train_shards: list[str]) -> RunConfig:
    """``cfg`` with data.tokenizer set: as given, else model.text.pretrained's own, else the
    run directory's (trained on the training captions the first time, reused on a resume)."""
    if cfg.data.tokenizer:
        return cfg
    if cfg.model.text.pretrained:
        folder = Path(cfg.model.text.pretrained)
        if not any((folder / name).is_file() for name in TOKENIZER_FILES):
            raise ConfigError(
                f"data.tokenizer: model.text.pretrained {str(folder)!r} has no tokenizer of its "
                f"own ({' or '.join(TOKENIZER_FILES)}); set data.tokenizer to the tokenizer that "
                "model was trained with"
            )
        console(f"tokenizer: model.text.pretrained's own, in {folder}")
        return _with_tokenizer(cfg, str(folder))
    if is_uri(cfg.train.storage_path):
        raise ConfigError(
            f"data.tokenizer: required when train.storage_path is an object-store URI "
            f"({cfg.train.storage_path!r}): a tokenizer trained into this machine's copy of the "
            "run directory would not reach workers on other nodes. Make one with `mmpretrain "
            "tokenizer train --data SHARDS --out OUT` in a folder every node sees and set "
            "data.tokenizer=OUT"
        )
    out = cfg.run_dir / RUN_TOKENIZER
    if (out / "tokenizer.json").is_file():
        vocab = load_tokenizer(str(out)).vocab_size
        console(f"tokenizer: reusing this run's, in {out} ({vocab} tokens)")
        return _with_tokenizer(cfg, str(out))
    if out.exists():
        raise ConfigError(
            f"data.tokenizer: {str(out)!r} exists but holds no tokenizer.json; remove it to "
            "train a tokenizer there, or set data.tokenizer"
        )
    count = train_run_tokenizer(cfg, train_shards, out)
    vocab = load_tokenizer(str(out)).vocab_size
    console(
        f"tokenizer: trained on {count} training captions (data.tokenizer_captions="
        f"{cfg.data.tokenizer_captions}, seed {cfg.train.seed}), {vocab} tokens, saved to {out}"
    )
    return _with_tokenizer(cfg, str(out))


def train_run_tokenizer(cfg: RunConfig, train_shards: list[str], out: Path) -> int:
    """Trains a WordPiece tokenizer on a seeded sample of the training captions into ``out``;
    returns how many captions it read.

    The captions are the ones training will see (data.caption_source and its rules), and a
    bounded sample keeps the driver's work to seconds on a corpus of millions. The folder
    appears whole or not at all, so a crash never leaves half a tokenizer for a resume to reuse.
    """
    captions = list(
        iter_captions(
            train_shards,
            limit=cfg.data.tokenizer_captions,
            seed=cfg.train.seed,
            caption_of=lambda members: _caption_or_none(members, cfg.data),
        )
    )
    if not captions:
        raise ConfigError(
            f"data.tokenizer: the training shards hold no usable caption (data.caption_source="
            f"{cfg.data.caption_source}) to train a tokenizer on; set data.tokenizer"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        train_tokenizer_on(captions, scratch, cfg.data.tokenizer_vocab_size)
        os.replace(scratch, out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return len(captions)


def _caption_or_none(members: dict[str, bytes], data: DataConfig) -> str | None:
    try:
        return extract_caption(members, data)
    except UnusableSampleError:
        return None  # training drops such a sample too


def _with_tokenizer(cfg: RunConfig, path: str) -> RunConfig:
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tokenizer=path))


# ---------------------------------------------------------------------------------------------
# The pretrained text encoder
# ---------------------------------------------------------------------------------------------


def check_pretrained_text(cfg: RunConfig) -> dict[str, Any]:
    """model.text.pretrained is a BERT folder with weights that fit the text config; returns
    its config.json.

    ``load_config`` has already taken the folder's sizes; checking them again here catches a
    config built some other way before a worker would.
    """
    folder = Path(cfg.model.text.pretrained)
    name = str(folder)
    if not folder.is_dir():
        raise ConfigError(f"model.text.pretrained: {name!r} is not a folder")
    bert_config = read_bert_config(folder)
    if bert_config is None:
        raise ConfigError(
            f"model.text.pretrained: {name!r} is not a Hugging Face model folder (no config.json)"
        )
    model_type = bert_config.get("model_type")
    if model_type != "bert":
        raise ConfigError(
            f"model.text.pretrained: {name!r} has model_type={model_type!r}; a BERT "
            "architecture (model_type 'bert', e.g. bert-base-uncased or MiniLM) is required"
        )
    check_text_matches_bert(cfg.model.text, bert_config)
    weights = next((folder / f for f in BERT_WEIGHT_FILES if (folder / f).is_file()), None)
    if weights is None:
        raise ConfigError(
            f"model.text.pretrained: {name!r} has no weights file "
            f"({' or '.join(BERT_WEIGHT_FILES)})"
        )
    shapes = _tensor_shapes(weights)
    embeddings = next((s for key, s in shapes.items() if key.endswith(WORD_EMBEDDINGS)), None)
    expected = [bert_config.get("vocab_size"), bert_config.get("hidden_size")]
    if embeddings != expected:
        found = f"of shape {embeddings}" if embeddings is not None else "none"
        raise ConfigError(
            f"model.text.pretrained: {str(weights)!r} does not fit its config.json: word "
            f"embeddings ({WORD_EMBEDDINGS}) should be vocab_size x hidden_size = {expected}, "
            f"found {found}"
        )
    return bert_config


def _tensor_shapes(weights: Path) -> dict[str, list[int]]:
    """Tensor name -> shape of a safetensors file (its header alone) or a torch pickle."""
    try:
        if weights.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(weights), framework="pt") as handle:
                names = handle.keys()  # a safetensors handle is not iterable
                return {key: list(handle.get_slice(key).get_shape()) for key in names}
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # header, zip, pickle and torch errors alike: not loadable
        raise ConfigError(f"model.text.pretrained: cannot read {str(weights)!r}: {exc}") from exc
    if not isinstance(state, dict):
        raise ConfigError(f"model.text.pretrained: {str(weights)!r} does not hold a state dict")
    return {key: list(value.shape) for key, value in state.items() if torch.is_tensor(value)}


def check_text_positions(cfg: RunConfig, bert_config: dict[str, Any] | None) -> None:
    """Every caption position has an embedding: the pretrained folder's, or the configured."""
    max_len = cfg.data.max_text_len
    if bert_config is not None:
        positions = bert_config.get("max_position_embeddings")
        where = f"max_position_embeddings={positions} of model.text.pretrained"
        where += f" {cfg.model.text.pretrained!r}"
    elif cfg.model.text.max_positions is not None:
        positions = cfg.model.text.max_positions
        where = f"model.text.max_positions={positions}"
    else:
        return  # a random BERT gets max(512, data.max_text_len) positions
    if not isinstance(positions, int) or positions < max_len:
        raise ConfigError(f"data.max_text_len={max_len} exceeds the {where}; lower it")


def check_vocabulary(cfg: RunConfig, bert_config: dict[str, Any], vocab_size: int) -> None:
    """The pretrained embedding table has one row per token of the tokenizer."""
    if bert_config.get("vocab_size") != vocab_size:
        raise ConfigError(
            f"data.tokenizer {cfg.data.tokenizer!r} has {vocab_size} tokens but "
            f"model.text.pretrained {cfg.model.text.pretrained!r} has vocab_size="
            f"{bert_config.get('vocab_size')}; use the tokenizer saved with that model (an "
            "empty data.tokenizer does)"
        )


# ---------------------------------------------------------------------------------------------
# The vision encoder's start-from weights
# ---------------------------------------------------------------------------------------------


def check_vision_weights(vision: VisionConfig) -> None:
    """model.vision.weights loads as a state dict whose keys and shapes fit the configured
    ResNet (built as the workers build it, model.vision.depths included); the error names the
    first key that does not fit."""
    path = vision.weights
    state = read_resnet_state(path)
    expected = build_resnet(dataclasses.replace(vision, weights=None)).state_dict()
    mismatch = _first_mismatch(state, expected)
    if mismatch is not None:
        arch = f"model.vision.name={vision.name}"
        if vision.depths is not None:
            arch += f", model.vision.depths={vision.depths}"
        raise ConfigError(
            f"model.vision.weights: {path!r} does not fit the configured ResNet ({arch}): "
            f"first mismatching key {mismatch}; check model.vision.name and model.vision.depths"
        )


def _first_mismatch(
    state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> str | None:
    """The first key that would not load, in the file's order then the model's, described."""
    for key, tensor in state.items():
        if key not in expected:
            return f"{key!r} (in the file, not in the model)"
        if tuple(tensor.shape) != tuple(expected[key].shape):
            return (
                f"{key!r} (shape {list(tensor.shape)} in the file, "
                f"{list(expected[key].shape)} in the model)"
            )
    for key in expected:
        # The classifier is not used; BatchNorm recreates a missing batch counter.
        if key not in state and not key.startswith("fc.") and "num_batches_tracked" not in key:
            return f"{key!r} (in the model, not in the file)"
    return None
