"""Cross-modal fusion: four ways for caption tokens and image regions to inform each other.

- ``cross_attention``: text self-attends, then attends to the image regions (ALBEF).
- ``merged``: one transformer stream over text and image tokens together (VisualBERT, UNITER).
- ``co_attention``: a text stream and an image stream that cross-attend each other (ViLBERT).
- ``gated``: cross-attention whose contribution to each text token is scaled by a learned,
  input-dependent gate in (0, 1): how much this token should take from the image versus keep
  from the text, the seed paper's context-dependent weighting of the two modalities.

Every variant maps (text tokens, text mask, image tokens) to fused text tokens whose position 0
([CLS]) summarises the pair, so ITM and MLM heads work on any of them. Each is one subclass of
``FusionModule`` that carries its own data flow, named in ``FUSION_VARIANTS``; ``build_fusion``
picks it from the config, so a new variant is one class and one registry entry.

Attention is written out with ``nn.Linear`` projections and ``scaled_dot_product_attention``
rather than ``nn.MultiheadAttention``, whose forward reads ``out_proj.weight`` without calling
``out_proj``: ZeRO-3 gathers a sharded parameter only when its own module runs.

``FusionModule.forward_with_attention`` also returns what each caption token attended to in the
image (for reports and inspection). Recording is off by default, so training runs the fused
``scaled_dot_product_attention`` kernel and never materialises the probabilities.
"""

from __future__ import annotations

import abc
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

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
        # While True, forward computes the probabilities explicitly and keeps the last ones
        # (``[B, H, L, N]``, detached) in ``recorded``; see ``FusionModule.forward_with_attention``.
        self.record = False
        self.recorded: torch.Tensor | None = None

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
        dropout = self.dropout if self.training else 0.0
        if self.record:
            attended_BHLd = self._recorded_attention(q_BHLd, k_BHNd, v_BHNd, mask, dropout)
        else:
            attended_BHLd = F.scaled_dot_product_attention(
                q_BHLd, k_BHNd, v_BHNd, attn_mask=mask, dropout_p=dropout
            )
        attended_BLD = attended_BHLd.transpose(1, 2).reshape(x_BLD.shape)
        return self.out(attended_BLD)

    def _recorded_attention(
        self,
        q_BHLd: torch.Tensor,
        k_BHNd: torch.Tensor,
        v_BHNd: torch.Tensor,
        mask: torch.Tensor | None,
        dropout: float,
    ) -> torch.Tensor:
        """What ``scaled_dot_product_attention`` computes, with the probabilities kept."""
        scores_BHLN = q_BHLd @ k_BHNd.transpose(-2, -1) / math.sqrt(q_BHLd.shape[-1])
        if mask is not None:
            scores_BHLN = scores_BHLN.masked_fill(~mask, -torch.inf)
        probs_BHLN = scores_BHLN.softmax(dim=-1)
        self.recorded = probs_BHLN.detach()
        return F.dropout(probs_BHLN, dropout, training=dropout > 0) @ v_BHNd


class FeedForward(nn.Module):
    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x_BLD: torch.Tensor) -> torch.Tensor:
        """Pre-norm residual feed-forward."""
        return x_BLD + self.dropout(self.down(F.gelu(self.up(self.norm(x_BLD)))))


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.attn = MultiHeadAttention(width, heads, dropout)

    def forward(self, x_BLD: torch.Tensor, mask_BL: torch.Tensor | None) -> torch.Tensor:
        normed_BLD = self.norm(x_BLD)
        return x_BLD + self.attn(normed_BLD, normed_BLD, mask_BL)


class CrossAttention(nn.Module):
    """Un-added cross-attention update ``attn(LN(x), LN(context))``; callers add (or gate) it."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.context_norm = nn.LayerNorm(width)
        self.attn = MultiHeadAttention(width, heads, dropout)

    def forward(
        self, x_BLD: torch.Tensor, context_BND: torch.Tensor, context_mask_BN: torch.Tensor | None
    ) -> torch.Tensor:
        return self.attn(self.norm(x_BLD), self.context_norm(context_BND), context_mask_BN)


class CrossAttentionLayer(nn.Module):
    """Text self-attention, then text -> image cross-attention, then feed-forward."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.self_attn = SelfAttention(width, heads, dropout)
        self.cross_attn = CrossAttention(width, heads, dropout)
        self.ffn = FeedForward(width, dropout)

    def forward(
        self, text_BLD: torch.Tensor, text_mask_BL: torch.Tensor, image_BND: torch.Tensor
    ) -> torch.Tensor:
        text_BLD = self.self_attn(text_BLD, text_mask_BL)
        text_BLD = text_BLD + self.cross_attn(text_BLD, image_BND, None)
        return self.ffn(text_BLD)


class ModalityGate(nn.Module):
    """Per-token weight in (0, 1) of the image's update against the text token's own state."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.score = nn.Linear(2 * width, 1)
        nn.init.zeros_(self.score.weight)  # start as an even 0.5 mix; learn where to deviate
        nn.init.zeros_(self.score.bias)

    def forward(self, text_BLD: torch.Tensor, update_BLD: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.score(torch.cat([self.norm(text_BLD), update_BLD], dim=-1)))


class GatedCrossAttentionLayer(nn.Module):
    """Cross-attention whose update is scaled per token by a gate that reads both modalities."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.self_attn = SelfAttention(width, heads, dropout)
        self.cross_attn = CrossAttention(width, heads, dropout)
        self.gate = ModalityGate(width)
        self.ffn = FeedForward(width, dropout)

    def forward(
        self, text_BLD: torch.Tensor, text_mask_BL: torch.Tensor, image_BND: torch.Tensor
    ) -> torch.Tensor:
        text_BLD = self.self_attn(text_BLD, text_mask_BL)
        update_BLD = self.cross_attn(text_BLD, image_BND, None)
        text_BLD = text_BLD + self.gate(text_BLD, update_BLD) * update_BLD
        return self.ffn(text_BLD)


class MergedLayer(nn.Module):
    """A transformer layer over the joint sequence of text and image tokens."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.self_attn = SelfAttention(width, heads, dropout)
        self.ffn = FeedForward(width, dropout)

    def forward(self, joint_BTD: torch.Tensor, joint_mask_BT: torch.Tensor) -> torch.Tensor:
        return self.ffn(self.self_attn(joint_BTD, joint_mask_BT))


class CoAttentionLayer(nn.Module):
    """Two streams: each self-attends, then attends to the other's state from before the layer."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.text_self = SelfAttention(width, heads, dropout)
        self.image_self = SelfAttention(width, heads, dropout)
        self.text_from_image = CrossAttention(width, heads, dropout)
        self.image_from_text = CrossAttention(width, heads, dropout)
        self.text_ffn = FeedForward(width, dropout)
        self.image_ffn = FeedForward(width, dropout)

    def forward(
        self, text_BLD: torch.Tensor, text_mask_BL: torch.Tensor, image_BND: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        text_BLD = self.text_self(text_BLD, text_mask_BL)
        image_BND = self.image_self(image_BND, None)
        text_update_BLD = self.text_from_image(text_BLD, image_BND, None)
        image_update_BND = self.image_from_text(image_BND, text_BLD, text_mask_BL)
        return self.text_ffn(text_BLD + text_update_BLD), self.image_ffn(
            image_BND + image_update_BND
        )


class FusionModule(nn.Module, abc.ABC):
    """A stack of fusion layers of one variant, a final norm, and optional checkpointing.

    The base of the variants below: what they share is the layer stack, the final norm, the
    activation-checkpointing call and the switch that records attention. Each variant says how
    its inputs flow through the stack (``forward``) and which attention modules read the image
    (``text_to_image_attention_modules``). Build one with ``build_fusion``.
    """

    layer_class: type[nn.Module]

    def __init__(self, cfg: FusionConfig, width: int):
        super().__init__()
        self.layers = nn.ModuleList(
            self.layer_class(width, cfg.heads, cfg.dropout) for _ in range(cfg.layers)
        )
        # Between the layers and the norm, so parameters keep the order earlier checkpoints
        # were written in: ZeRO's flat optimizer-state partitions follow that order.
        self._add_input_modules(width)
        self.norm = nn.LayerNorm(width)
        self.activation_checkpointing = False

    def _add_input_modules(self, width: int) -> None:
        """Modules a variant applies to its inputs before the layers; none by default."""

    @abc.abstractmethod
    def text_to_image_attention_modules(self) -> list[MultiHeadAttention]:
        """Per layer, the attention whose queries are caption tokens and whose keys hold the
        image tokens."""

    @abc.abstractmethod
    def forward(
        self, text_BLD: torch.Tensor, text_mask_BL: torch.Tensor, image_BND: torch.Tensor
    ) -> torch.Tensor:
        """Text tokens conditioned on the image; position 0 ([CLS]) summarises the pair."""

    def forward_with_attention(
        self, text_BLD: torch.Tensor, text_mask_BL: torch.Tensor, image_BND: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` plus each caption token's attention over the image tokens.

        Returns (fused text ``[B, L, D]``, attention ``[B, layers, heads, L, N]``), where every
        row sums to 1 over the N image tokens.
        """
        return self._forward_recording_attention(text_BLD, text_mask_BL, image_BND)

    def _forward_recording_attention(
        self, text_BLD: torch.Tensor, text_mask_BL: torch.Tensor, image_BND: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` with ``text_to_image_attention_modules`` recording; -> (fused text,
        their probabilities stacked per layer ``[B, layers, heads, queries, keys]``).

        Recording is switched off again whatever happens, so training never pays for it.
        """
        modules = self.text_to_image_attention_modules()
        for module in modules:
            module.record = True
        try:
            fused_BLD = self(text_BLD, text_mask_BL, image_BND)
            recorded = [module.recorded for module in modules]
        finally:
            for module in modules:
                module.record, module.recorded = False, None
        return fused_BLD, torch.stack(recorded, dim=1)

    def _call(self, layer: nn.Module, *inputs: torch.Tensor):
        """Run one layer, recomputing its activations in backward when checkpointing is on."""
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(layer, *inputs, use_reentrant=False)
        return layer(*inputs)


class CrossAttentionFusion(FusionModule):
    """``cross_attention``: one text stream that attends to the image tokens in every layer."""

    layer_class = CrossAttentionLayer

    def text_to_image_attention_modules(self) -> list[MultiHeadAttention]:
        return [layer.cross_attn.attn for layer in self.layers]

    def forward(
        self, text_BLD: torch.Tensor, text_mask_BL: torch.Tensor, image_BND: torch.Tensor
    ) -> torch.Tensor:
        for layer in self.layers:
            text_BLD = self._call(layer, text_BLD, text_mask_BL, image_BND)
        return self.norm(text_BLD)


class GatedFusion(CrossAttentionFusion):
    """``gated``: the ``cross_attention`` stream, each layer's image update gated per token.

    The gate lives inside ``GatedCrossAttentionLayer``; how tokens flow through the stack and
    which attention reads the image are those of ``cross_attention``.
    """

    layer_class = GatedCrossAttentionLayer


class MergedFusion(FusionModule):
    """``merged``: text and image tokens as one sequence through shared self-attention."""

    layer_class = MergedLayer

    def _add_input_modules(self, width: int) -> None:
        # Which token is text and which is image: one learned vector per modality.
        self.modality = nn.Embedding(2, width)

    def text_to_image_attention_modules(self) -> list[MultiHeadAttention]:
        """The joint self-attention: its caption-token queries see text and image keys."""
        return [layer.self_attn.attn for layer in self.layers]

    def forward(
        self, text_BLD: torch.Tensor, text_mask_BL: torch.Tensor, image_BND: torch.Tensor
    ) -> torch.Tensor:
        length = text_BLD.shape[1]
        types_T = torch.cat(
            [
                torch.zeros(length, dtype=torch.long, device=text_BLD.device),
                torch.ones(image_BND.shape[1], dtype=torch.long, device=text_BLD.device),
            ]
        )
        joint_BTD = torch.cat([text_BLD, image_BND], dim=1) + self.modality(types_T)
        image_mask_BN = text_mask_BL.new_ones(image_BND.shape[:2])
        joint_mask_BT = torch.cat([text_mask_BL, image_mask_BN], dim=1)
        for layer in self.layers:
            joint_BTD = self._call(layer, joint_BTD, joint_mask_BT)
        return self.norm(joint_BTD[:, :length])

    def forward_with_attention(
        self, text_BLD: torch.Tensor, text_mask_BL: torch.Tensor, image_BND: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The text rows of the joint self-attention, cut to the image columns and
        renormalised: where, within the image, a token looks, whatever share of its attention
        it gives to the text. Shapes as in ``FusionModule.forward_with_attention``."""
        fused_BLD, joint_BXHTT = self._forward_recording_attention(
            text_BLD, text_mask_BL, image_BND
        )
        length = text_BLD.shape[1]
        attention_BXHLN = joint_BXHTT[..., :length, length:]
        return fused_BLD, attention_BXHLN / attention_BXHLN.sum(dim=-1, keepdim=True)


class CoAttentionFusion(FusionModule):
    """``co_attention``: a text stream and an image stream that attend to each other."""

    layer_class = CoAttentionLayer

    def text_to_image_attention_modules(self) -> list[MultiHeadAttention]:
        return [layer.text_from_image.attn for layer in self.layers]

    def forward(
        self, text_BLD: torch.Tensor, text_mask_BL: torch.Tensor, image_BND: torch.Tensor
    ) -> torch.Tensor:
        for layer in self.layers:
            text_BLD, image_BND = self._call(layer, text_BLD, text_mask_BL, image_BND)
        return self.norm(text_BLD)


# ``model.fusion.type`` -> the variant it builds. A new variant is one class and one entry here
# (and its name in ``config.FUSION_TYPES``, which validates the key).
FUSION_VARIANTS: dict[str, type[FusionModule]] = {
    "cross_attention": CrossAttentionFusion,
    "merged": MergedFusion,
    "co_attention": CoAttentionFusion,
    "gated": GatedFusion,
}


def build_fusion(cfg: FusionConfig, width: int) -> FusionModule:
    """The fusion variant ``cfg.type`` names, ``cfg.layers`` deep at ``width``."""
    if cfg.type not in FUSION_VARIANTS:
        raise ValueError(
            f"model.fusion.type: got {cfg.type!r}; allowed values are {list(FUSION_VARIANTS)}"
        )
    return FUSION_VARIANTS[cfg.type](cfg, width)
