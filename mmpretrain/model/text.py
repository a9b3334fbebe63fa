"""BERT text encoder: built from ``BertConfig`` (random init) or a local Hugging Face folder.

Nothing here downloads: ``from_pretrained`` is called with ``local_files_only``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import BertConfig, BertModel

from mmpretrain.config import ConfigError, TextConfig, check_text_matches_bert

BERT_MAX_POSITIONS = 512


def load_pretrained_bert(cfg: TextConfig, vocab_size: int, max_len: int) -> BertModel:
    """A local BERT whose sizes must equal the config's, so fusion and heads fit it.

    The driver checked all of this before Ray started (``load_config`` took the sizes from the
    folder, ``train/preflight.py`` checked vocabulary and positions); these checks are the last
    guard for a config that changed since, or a model built outside ``run_training``.
    """
    folder = Path(cfg.pretrained)
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"model.text.pretrained: {cfg.pretrained!r} is not a Hugging Face model folder "
            "(no config.json)"
        )
    bert = BertModel.from_pretrained(folder, local_files_only=True, add_pooling_layer=False)
    check_text_matches_bert(cfg, bert.config.to_dict())
    if bert.config.vocab_size != vocab_size:
        raise ConfigError(
            f"data.tokenizer has {vocab_size} tokens but model.text.pretrained has "
            f"vocab_size={bert.config.vocab_size}; use the tokenizer saved with that model"
        )
    if bert.config.max_position_embeddings < max_len:
        raise ConfigError(
            f"data.max_text_len={max_len} exceeds the {bert.config.max_position_embeddings} "
            "positions of model.text.pretrained"
        )
    return bert


def text_positions(cfg: TextConfig, max_len: int) -> int:
    """Position embeddings of a randomly initialised BERT: model.text.max_positions if set."""
    positions = cfg.max_positions or max(BERT_MAX_POSITIONS, max_len)
    if positions < max_len:
        raise ConfigError(
            f"model.text.max_positions={positions} must be >= data.max_text_len={max_len}"
        )
    return positions


class TextEncoder(nn.Module):
    def __init__(self, cfg: TextConfig, vocab_size: int, pad_token_id: int, max_len: int):
        super().__init__()
        if cfg.pretrained:
            self.bert = load_pretrained_bert(cfg, vocab_size, max_len)
        else:
            config = BertConfig(
                vocab_size=vocab_size,
                hidden_size=cfg.hidden_size,
                num_hidden_layers=cfg.layers,
                num_attention_heads=cfg.heads,
                intermediate_size=cfg.intermediate_size,
                max_position_embeddings=text_positions(cfg, max_len),
                pad_token_id=pad_token_id,
            )
            self.bert = BertModel(config, add_pooling_layer=False)
        self.width = self.bert.config.hidden_size

    def set_activation_checkpointing(self, enabled: bool) -> None:
        # transformers 5 renamed gradient_* to activation_checkpointing_*; 4.x has only the old.
        if hasattr(self.bert, "activation_checkpointing_enable"):
            enable, disable = (
                self.bert.activation_checkpointing_enable,
                self.bert.activation_checkpointing_disable,
            )
            active = self.bert.is_activation_checkpointing
        else:
            enable, disable = (
                self.bert.gradient_checkpointing_enable,
                self.bert.gradient_checkpointing_disable,
            )
            active = self.bert.is_gradient_checkpointing
        if enabled:
            enable({"use_reentrant": False})
        elif active:
            disable()

    def forward(self, input_ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor) -> torch.Tensor:
        """Token ids -> contextual token features ``[B, L, hidden]`` ([CLS] first)."""
        return self.bert(input_ids=input_ids_BL, attention_mask=attention_mask_BL).last_hidden_state
