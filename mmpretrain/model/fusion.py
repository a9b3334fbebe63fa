"""Cross-modal fusion: text tokens attend to each other, then to image regions (ALBEF style).

Attention is written out with ``nn.Linear`` projections and ``scaled_dot_product_attention``
rather than ``nn.MultiheadAttention``, whose forward reads ``out_proj.weight`` without calling
``out_proj``: ZeRO-3 gathers a sharded parameter only when its own module runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmpretrain.config import FusionConfig


class MultiHeadAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def _split(self, x_BLD: torch.Tensor) -> torch.Tensor:
        batch, length, width = x_BLD.shape
        return x_BLD.view(batch, length, self.heads, width // self.heads).transpose(1, 2)

    def forward(
        self,
        x_BLD: torch.Tensor,
        context_BND: torch.Tensor,
        context_mask_BN: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``context_mask_BN`` is True where a context token may be attended to."""
        q_BHLd = self._split(self.query(x_BLD))
        k_BHNd = self._split(self.key(context_BND))
        v_BHNd = self._split(self.value(context_BND))
        mask = None if context_mask_BN is None else context_mask_BN[:, None, None, :].bool()
        attended_BHLd = F.scaled_dot_product_attention(
            q_BHLd, k_BHNd, v_BHNd, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        attended_BLD = attended_BHLd.transpose(1, 2).reshape(x_BLD.shape)
        return self.out(attended_BLD)


class FeedForward(nn.Module):
    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x_BLD: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.gelu(self.up(x_BLD))))


class CrossAttentionLayer(nn.Module):
    """Pre-norm block: self-attention over text, cross-attention to image, feed-forward."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.self_norm = nn.LayerNorm(width)
        self.self_attn = MultiHeadAttention(width, heads, dropout)
        self.cross_norm = nn.LayerNorm(width)
        self.cross_attn = MultiHeadAttention(width, heads, dropout)
        self.ffn_norm = nn.LayerNorm(width)
        self.ffn = FeedForward(width, dropout)

    def forward(
        self, text_BLD: torch.Tensor, text_mask_BL: torch.Tensor, image_BND: torch.Tensor
    ) -> torch.Tensor:
        normed = self.self_norm(text_BLD)
        text_BLD = text_BLD + self.self_attn(normed, normed, text_mask_BL)
        text_BLD = text_BLD + self.cross_attn(self.cross_norm(text_BLD), image_BND)
        return text_BLD + self.ffn(self.ffn_norm(text_BLD))


class FusionModule(nn.Module):
    def __init__(self, cfg: FusionConfig, width: int):
        super().__init__()
        self.layers = nn.ModuleList(
            CrossAttentionLayer(width, cfg.heads, cfg.dropout) for _ in range(cfg.layers)
        )
        self.norm = nn.LayerNorm(width)

    def forward(
        self, text_BLD: torch.Tensor, text_mask_BL: torch.Tensor, image_BND: torch.Tensor
    ) -> torch.Tensor:
        """Text tokens conditioned on the image; position 0 ([CLS]) summarises the pair."""
        for layer in self.layers:
            text_BLD = layer(text_BLD, text_mask_BL, image_BND)
        return self.norm(text_BLD)
