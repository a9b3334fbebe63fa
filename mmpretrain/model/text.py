"""BERT text encoder built from a ``BertConfig`` (random init; never downloads weights)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig, BertModel

from mmpretrain.config import TextConfig

BERT_MAX_POSITIONS = 512


class TextEncoder(nn.Module):
    def __init__(self, cfg: TextConfig, vocab_size: int, pad_token_id: int, max_len: int):
        super().__init__()
        self.config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.layers,
            num_attention_heads=cfg.heads,
            intermediate_size=cfg.intermediate_size,
            max_position_embeddings=max(BERT_MAX_POSITIONS, max_len),
            pad_token_id=pad_token_id,
        )
        self.bert = BertModel(self.config, add_pooling_layer=False)

    def forward(self, input_ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor) -> torch.Tensor:
        """Token ids -> contextual token features ``[B, L, hidden]`` ([CLS] first)."""
        return self.bert(input_ids=input_ids_BL, attention_mask=attention_mask_BL).last_hidden_state
