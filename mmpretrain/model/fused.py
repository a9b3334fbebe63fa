"""The fused encoder: vision + text encoders, fusion module, and the small heads on top.

It returns features only; ``objectives.py`` turns them into losses and ``task.py`` joins the two.
Every parameter is used through its own module's ``forward`` (heads are modules, the temperature
too), which is what ZeRO-3's parameter gathering relies on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmpretrain.config import ModelConfig
from mmpretrain.model.fusion import FusionModule, build_fusion
from mmpretrain.model.objectives import mask_tokens
from mmpretrain.model.text import TextEncoder
from mmpretrain.model.vision import VisionEncoder


@dataclass(frozen=True)
class TokenIds:
    """What the model must know of the tokenizer: vocabulary size and special ids."""

    vocab_size: int
    pad_id: int
    cls_id: int
    sep_id: int
    mask_id: int

    def mask(
        self, input_ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor, probability: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """BERT masking of a caption batch with this vocabulary's ids (objectives.mask_tokens):
        (masked ids, labels)."""
        return mask_tokens(
            input_ids_BL,
            attention_mask_BL,
            vocab_size=self.vocab_size,
            mask_id=self.mask_id,
            special_ids=(self.pad_id, self.cls_id, self.sep_id),
            probability=probability,
        )


class Temperature(nn.Module):
    """Learnable ITC logit scale, kept as log(1/T) and clamped as in CLIP.

    Stored with shape ``[1]``: DeepSpeed's parameter broadcast cannot view a 0-dim tensor.
    """

    def __init__(self, initial: float, max_scale: float = 100.0):
        super().__init__()
        self.log_scale = nn.Parameter(torch.full((1,), math.log(1.0 / initial)))
        self.max_log_scale = math.log(max_scale)

    def forward(self) -> torch.Tensor:
        return self.log_scale.clamp(max=self.max_log_scale).exp().squeeze(0)


class MLMHead(nn.Module):
    def __init__(self, width: int, vocab_size: int):
        super().__init__()
        self.transform = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.decoder = nn.Linear(width, vocab_size)

    def forward(self, x_BLD: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(F.gelu(self.transform(x_BLD))))


class FusedEncoder(nn.Module):
    def __init__(
        self, cfg: ModelConfig, tokens: TokenIds, max_text_len: int, temperature: float = 0.07
    ):
        super().__init__()
        width = cfg.fusion_width
        self.tokens = tokens
        self.vision = VisionEncoder(cfg.vision, width)
        self.text = TextEncoder(cfg.text, tokens.vocab_size, tokens.pad_id, max_text_len)
        # Text features enter the fusion width; an identity when the widths agree (BERT-base).
        self.text_to_fusion = (
            nn.Identity() if self.text.width == width else nn.Linear(self.text.width, width)
        )
        self.fusion: FusionModule = build_fusion(cfg.fusion, width)
        self.image_proj = nn.Linear(width, cfg.embed_dim)
        self.text_proj = nn.Linear(self.text.width, cfg.embed_dim)
        self.temperature = Temperature(temperature)
        self.itm_head = nn.Linear(width, 2)
        self.mlm_head = MLMHead(width, tokens.vocab_size)

    def set_speed_options(self, *, channels_last: bool, activation_checkpointing: bool) -> None:
        """Memory-layout and recompute switches; neither changes what the model computes."""
        self.vision.channels_last = channels_last
        self.text.set_activation_checkpointing(activation_checkpointing)
        self.fusion.activation_checkpointing = activation_checkpointing

    def encode_image(self, images_BHWC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (region tokens ``[B, N, D]``, unit ITC embedding ``[B, E]``)."""
        image_BND = self.vision(images_BHWC)
        return image_BND, F.normalize(self.image_proj(image_BND[:, 0]), dim=-1)

    def encode_text(
        self, input_ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (token features ``[B, L, D]``, unit ITC embedding ``[B, E]``)."""
        text_BLD = self.text(input_ids_BL, attention_mask_BL)
        return text_BLD, F.normalize(self.text_proj(text_BLD[:, 0]), dim=-1)

    def fuse(
        self, text_BLD: torch.Tensor, attention_mask_BL: torch.Tensor, image_BND: torch.Tensor
    ) -> torch.Tensor:
        """Text-encoder features + image tokens -> fused text tokens (pair summary at 0)."""
        return self.fusion(self.text_to_fusion(text_BLD), attention_mask_BL, image_BND)

    def fuse_with_attention(
        self, text_BLD: torch.Tensor, attention_mask_BL: torch.Tensor, image_BND: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``fuse`` plus each caption token's attention over the image tokens, per fusion layer
        and head: ``[B, layers, heads, L, 1 + regions]`` (global image token first), rows
        summing to 1. For looking at what the model reads, not for training."""
        return self.fusion.forward_with_attention(
            self.text_to_fusion(text_BLD), attention_mask_BL, image_BND
        )

    def match_logits(
        self, text_BLD: torch.Tensor, attention_mask_BL: torch.Tensor, image_BND: torch.Tensor
    ) -> torch.Tensor:
        """ITM logits ``[B, 2]`` (column 1 = "these belong together") for aligned rows."""
        return self.itm_head(self.fuse(text_BLD, attention_mask_BL, image_BND)[:, 0])
