"""Joins the fused encoder and the objectives: one forward pass -> weighted losses.

This is the module the training engine wraps. A weight of 0 skips that objective's computation,
not just its contribution, and builds none of its modules. Training-only parts (the text-only
MLM head, the SimSiam head, the momentum encoder) live here, not in the encoder, so an export
holds exactly the model that embeds and matches.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from mmpretrain.config import ModelConfig, ObjectivesConfig
from mmpretrain.model.fused import FusedEncoder, MLMHead, TokenIds
from mmpretrain.model.objectives import (
    duplicate_mask,
    gather_no_grad,
    gather_with_grad,
    global_rows,
    image_fingerprint,
    itc_loss,
    itm_loss,
    mlm_loss,
    sample_hard_negatives,
)
from mmpretrain.model.ssl import SimSiamHead, random_view, simsiam_loss


@dataclass
class PairFeatures:
    """A batch of pairs and what the two encoders made of it, shared by every objective."""

    images_BHWC: torch.Tensor
    input_ids_BL: torch.Tensor
    attention_mask_BL: torch.Tensor
    image_BND: torch.Tensor  # region tokens, global token first
    image_emb_BE: torch.Tensor  # unit ITC embeddings
    text_BLD: torch.Tensor  # text-encoder token features, [CLS] first
    text_emb_BE: torch.Tensor


@dataclass
class MomentumFeatures:
    """The momentum encoder's view of the batch (no gradients): ALBEF's distillation targets."""

    image_BND: torch.Tensor
    image_emb_BE: torch.Tensor
    text_emb_BE: torch.Tensor


class PretrainingTask(nn.Module):
    def __init__(self, encoder: FusedEncoder, objectives: ObjectivesConfig):
        super().__init__()
        self.encoder = encoder
        self.objectives = objectives
        vocab_size = encoder.tokens.vocab_size
        self.text_mlm_head = (
            MLMHead(encoder.text.width, vocab_size) if objectives.text_mlm > 0 else None
        )
        self.ssl_head = (
            SimSiamHead(encoder.vision.trunk_width, objectives.ssl_dim)
            if objectives.image_ssl > 0
            else None
        )
        # ALBEF's momentum model: an EMA copy of the encoder, never trained by gradients.
        self.momentum_encoder = copy.deepcopy(encoder) if objectives.distill else None
        if self.momentum_encoder is not None:
            self.momentum_encoder.requires_grad_(False)

    def forward(
        self, images_BHWC: torch.Tensor, input_ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Returns ``loss`` (weighted total) and each active objective's unweighted loss."""
        weights = self.objectives
        image_BND, image_emb_BE = self.encoder.encode_image(images_BHWC)
        text_BLD, text_emb_BE = self.encoder.encode_text(input_ids_BL, attention_mask_BL)
        pairs = PairFeatures(
            images_BHWC, input_ids_BL, attention_mask_BL,
            image_BND, image_emb_BE, text_BLD, text_emb_BE,
        )  # fmt: skip
        momentum = self._momentum_features(pairs)
        out: dict[str, torch.Tensor] = {}

        if weights.itc > 0:
            out["loss_itc"] = self._contrastive(pairs, momentum)
        if weights.itm > 0:
            out["loss_itm"], out["itm_accuracy"] = self._image_text_matching(pairs)
        if weights.mlm > 0 or weights.text_mlm > 0:
            out.update(self._masked_language_modelling(pairs, momentum))
        if weights.image_ssl > 0:
            out["loss_image_ssl"] = self._image_self_supervision(images_BHWC)

        out["loss"] = sum(
            getattr(weights, name[len("loss_") :]) * value
            for name, value in out.items()
            if name.startswith("loss_")
        )
        return out

    def _contrastive(self, pairs: PairFeatures, momentum: MomentumFeatures | None) -> torch.Tensor:
        soft = None if momentum is None else (momentum.image_emb_BE, momentum.text_emb_BE)
        return itc_loss(
            pairs.image_emb_BE,
            pairs.text_emb_BE,
            self.encoder.temperature(),
            momentum=soft,
            alpha=self.objectives.distill_alpha,
        )

    def _image_text_matching(self, pairs: PairFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """ITM on B positives, B hard negative captions and B hard negative images.

        Negatives come from the whole global batch: for each local image the caption most
        easily confused with its own (sampled by ITC similarity), never one identical to it, and
        likewise for each caption. Token features are gathered with gradients, as in BLIP, so the
        rank that owns a negative learns from it too.
        """
        batch = len(pairs.images_BHWC)
        with torch.no_grad():
            fingerprint_B = image_fingerprint(pairs.images_BHWC)
            excluded_BG = duplicate_mask(
                pairs.input_ids_BL,
                fingerprint_B,
                gather_no_grad(pairs.input_ids_BL),
                gather_no_grad(fingerprint_B),
            )
            positives_B = global_rows(batch, pairs.images_BHWC.device)
            negative_text_B = sample_hard_negatives(
                pairs.image_emb_BE @ gather_no_grad(pairs.text_emb_BE).T, excluded_BG, positives_B
            )
            negative_image_B = sample_hard_negatives(
                pairs.text_emb_BE @ gather_no_grad(pairs.image_emb_BE).T, excluded_BG, positives_B
            )
        text_BLD, mask_BL, image_BND = pairs.text_BLD, pairs.attention_mask_BL, pairs.image_BND
        all_text_GLD = gather_with_grad(text_BLD)
        all_mask_GL = gather_no_grad(mask_BL)
        all_image_GND = gather_with_grad(image_BND)
        logits_P2 = self.encoder.match_logits(
            torch.cat([text_BLD, all_text_GLD[negative_text_B], text_BLD]),
            torch.cat([mask_BL, all_mask_GL[negative_text_B], mask_BL]),
            torch.cat([image_BND, image_BND, all_image_GND[negative_image_B]]),
        )
        return itm_loss(logits_P2, positives=batch)

    def _masked_language_modelling(
        self, pairs: PairFeatures, momentum: MomentumFeatures | None
    ) -> dict[str, torch.Tensor]:
        """Image-conditioned MLM (through fusion) and text-only MLM share one masked encoding."""
        weights, tokens = self.objectives, self.encoder.tokens
        input_ids_BL, attention_mask_BL = pairs.input_ids_BL, pairs.attention_mask_BL
        masked_BL, labels_BL = tokens.mask(input_ids_BL, attention_mask_BL, weights.mlm_probability)
        masked_text_BLD = self.encoder.text(masked_BL, attention_mask_BL)
        out: dict[str, torch.Tensor] = {}
        if weights.mlm > 0:
            fused_BLD = self.encoder.fuse(masked_text_BLD, attention_mask_BL, pairs.image_BND)
            momentum_logits = None
            if momentum is not None and self.momentum_encoder is not None:
                with torch.no_grad():
                    m = self.momentum_encoder
                    m_text_BLD = m.text(masked_BL, attention_mask_BL)
                    momentum_logits = m.mlm_head(
                        m.fuse(m_text_BLD, attention_mask_BL, momentum.image_BND)
                    )
            out["loss_mlm"] = mlm_loss(
                self.encoder.mlm_head(fused_BLD),
                labels_BL,
                momentum_logits,
                weights.distill_alpha,
            )
        if weights.text_mlm > 0:
            # Text-only: predict the masked words from the caption alone, no image.
            out["loss_text_mlm"] = mlm_loss(self.text_mlm_head(masked_text_BLD), labels_BL)
        return out

    @torch.no_grad()
    def _momentum_features(self, pairs: PairFeatures) -> MomentumFeatures | None:
        if self.momentum_encoder is None:
            return None
        image_BND, image_emb_BE = self.momentum_encoder.encode_image(pairs.images_BHWC)
        _, text_emb_BE = self.momentum_encoder.encode_text(
            pairs.input_ids_BL, pairs.attention_mask_BL
        )
        return MomentumFeatures(image_BND, image_emb_BE, text_emb_BE)

    def _image_self_supervision(self, images_BHWC: torch.Tensor) -> torch.Tensor:
        """SimSiam on two random views of each image, through the same ResNet trunk (whose
        BatchNorm statistics keep tracking real images only)."""
        vision = self.encoder.vision
        pixels_BCHW = vision.to_pixels(images_BHWC)
        size = self.objectives.ssl_view_size
        views = [
            vision.pooled(random_view(pixels_BCHW, size), track_statistics=False) for _ in range(2)
        ]
        projection1_BD, prediction1_BD = self.ssl_head(views[0])
        projection2_BD, prediction2_BD = self.ssl_head(views[1])
        return simsiam_loss(prediction1_BD, prediction2_BD, projection1_BD, projection2_BD)

    def momentum_pairs(self) -> Iterator[tuple[nn.Parameter, nn.Parameter]]:
        """(momentum parameter, online parameter) pairs for the EMA update; none without distill.

        The update itself belongs to the trainer, which knows where a sharded parameter's
        values live (ZeRO-3 keeps each rank's slice outside ``param.data``).
        """
        if self.momentum_encoder is None:
            return iter(())
        return zip(self.momentum_encoder.parameters(), self.encoder.parameters(), strict=True)


def build_task(
    model: ModelConfig, objectives: ObjectivesConfig, tokens: TokenIds, max_text_len: int
) -> PretrainingTask:
    encoder = FusedEncoder(model, tokens, max_text_len, temperature=objectives.temperature)
    return PretrainingTask(encoder, objectives)
