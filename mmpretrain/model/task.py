"""Joins the fused encoder and the objectives: one forward pass -> weighted losses.

This is the module the training engine wraps. A weight of 0 skips that objective's computation,
not just its contribution.
"""

from __future__ import annotations

import torch
from torch import nn

from mmpretrain.config import ModelConfig, ObjectivesConfig
from mmpretrain.model.fused import FusedEncoder, TokenIds
from mmpretrain.model.objectives import (
    duplicate_mask,
    itc_loss,
    itm_loss,
    mask_tokens,
    mlm_loss,
    sample_hard_negatives,
)


class PretrainingTask(nn.Module):
    def __init__(self, encoder: FusedEncoder, objectives: ObjectivesConfig):
        super().__init__()
        self.encoder = encoder
        self.objectives = objectives

    def forward(
        self, images_BHWC: torch.Tensor, input_ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Returns ``loss`` (weighted total) and each active objective's unweighted loss."""
        weights = self.objectives
        image_BND, image_emb_BE = self.encoder.encode_image(images_BHWC)
        text_BLD, text_emb_BE = self.encoder.encode_text(input_ids_BL, attention_mask_BL)
        out: dict[str, torch.Tensor] = {}

        if weights.itc > 0:
            out["loss_itc"] = itc_loss(image_emb_BE, text_emb_BE, self.encoder.temperature())

        if weights.itm > 0:
            # Hard negatives: for each image a similar-but-wrong caption, and vice versa.
            with torch.no_grad():
                similarity_BB = image_emb_BE @ text_emb_BE.T
                excluded_BB = duplicate_mask(input_ids_BL, images_BHWC)
                negative_text_B = sample_hard_negatives(similarity_BB, excluded_BB)
                negative_image_B = sample_hard_negatives(similarity_BB.T, excluded_BB)
            fused_text_BLD = torch.cat([text_BLD, text_BLD[negative_text_B], text_BLD])
            fused_mask_BL = torch.cat(
                [attention_mask_BL, attention_mask_BL[negative_text_B], attention_mask_BL]
            )
            fused_image_BND = torch.cat([image_BND, image_BND, image_BND[negative_image_B]])
            fused_BLD = self.encoder.fuse(fused_text_BLD, fused_mask_BL, fused_image_BND)
            out["loss_itm"], out["itm_accuracy"] = itm_loss(
                self.encoder.itm_head(fused_BLD[:, 0]), positives=len(images_BHWC)
            )

        if weights.mlm > 0:
            # Predict masked caption words from the rest of the caption and the image.
            tokens = self.encoder.tokens
            masked_BL, labels_BL = mask_tokens(
                input_ids_BL,
                attention_mask_BL,
                vocab_size=tokens.vocab_size,
                mask_id=tokens.mask_id,
                special_ids=(tokens.pad_id, tokens.cls_id, tokens.sep_id),
                probability=weights.mlm_probability,
            )
            masked_text_BLD = self.encoder.text(masked_BL, attention_mask_BL)
            fused_BLD = self.encoder.fuse(masked_text_BLD, attention_mask_BL, image_BND)
            out["loss_mlm"] = mlm_loss(self.encoder.mlm_head(fused_BLD), labels_BL)

        out["loss"] = sum(
            getattr(weights, name[len("loss_") :]) * value
            for name, value in out.items()
            if name.startswith("loss_")
        )
        return out

    @torch.no_grad()
    def embed(
        self, images_BHWC: torch.Tensor, input_ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit ITC embeddings of images and captions, for retrieval evaluation."""
        _, image_emb_BE = self.encoder.encode_image(images_BHWC)
        _, text_emb_BE = self.encoder.encode_text(input_ids_BL, attention_mask_BL)
        return image_emb_BE, text_emb_BE


def build_task(
    model: ModelConfig, objectives: ObjectivesConfig, tokens: TokenIds, max_text_len: int
) -> PretrainingTask:
    encoder = FusedEncoder(model, tokens, max_text_len, temperature=objectives.temperature)
    return PretrainingTask(encoder, objectives)
