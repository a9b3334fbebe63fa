"""Builds the model a run describes, for training workers, evaluation workers and exports."""

from __future__ import annotations

import dataclasses

from mmpretrain.config import RunConfig
from mmpretrain.data.tokenizer import CaptionTokenizer
from mmpretrain.model import FusedEncoder, PretrainingTask, TokenIds, build_task


def token_ids(tokenizer: CaptionTokenizer) -> TokenIds:
    return TokenIds(
        tokenizer.vocab_size,
        tokenizer.pad_id,
        tokenizer.cls_id,
        tokenizer.sep_id,
        tokenizer.mask_id,
    )


def build_training_task(cfg: RunConfig, tokenizer: CaptionTokenizer) -> PretrainingTask:
    """The encoder plus every active objective's modules, with the run's speed switches."""
    task = build_task(cfg.model, cfg.objectives, token_ids(tokenizer), cfg.data.max_text_len)
    task.encoder.set_speed_options(
        channels_last=cfg.train.channels_last,
        activation_checkpointing=cfg.train.activation_checkpointing,
    )
    return task


def build_encoder(cfg: RunConfig, tokenizer: CaptionTokenizer) -> FusedEncoder:
    """The encoder alone (what evaluation and exports hold), random until weights are loaded.

    Local start-from weights (``model.vision.weights``, ``model.text.pretrained``) are not read:
    a trained state dict replaces them right after.
    """
    model = cfg.model
    bare = dataclasses.replace(
        model,
        vision=dataclasses.replace(model.vision, weights=None),
        text=dataclasses.replace(model.text, pretrained=None),
    )
    encoder = FusedEncoder(
        bare, token_ids(tokenizer), cfg.data.max_text_len, cfg.objectives.temperature
    )
    encoder.vision.channels_last = cfg.train.channels_last
    return encoder
