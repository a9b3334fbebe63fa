"""Pretraining objectives as functions of features: ITC, ITM with hard negatives, MLM.

All cross-rank communication of the objectives is ``gather_with_grad``; nothing else here talks
to other ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

IGNORE_INDEX = -100


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for this rank's slice.

    Each rank computes the loss over the global batch, so the gradient of this rank's features
    has a term from every rank's loss; all_reduce gathers them (gloo and NCCL both have it,
    unlike reduce_scatter on gloo).
    """

    @staticmethod
    def forward(ctx, x_BD: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        ctx.rank, ctx.rows = dist.get_rank(), x_BD.shape[0]
        parts = [torch.empty_like(x_BD) for _ in range(world)]
        dist.all_gather(parts, x_BD.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad_GD: torch.Tensor) -> torch.Tensor:
        grad_GD = grad_GD.contiguous()
        dist.all_reduce(grad_GD, op=dist.ReduceOp.SUM)
        return grad_GD[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(x_BD: torch.Tensor) -> torch.Tensor:
    """Concatenates ``x`` from all ranks (rank order) with gradients flowing back to each rank.

    Requires equal batch sizes on every rank, which the trainer guarantees (equal data splits,
    drop_last). Single-process runs get ``x`` back unchanged.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x_BD
    return _GatherWithGrad.apply(x_BD)


def itc_loss(
    image_emb_BE: torch.Tensor, text_emb_BE: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE of local rows against the global batch's embeddings as negatives."""
    all_image_GE = gather_with_grad(image_emb_BE)
    all_text_GE = gather_with_grad(text_emb_BE)
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    batch = image_emb_BE.shape[0]
    targets_B = torch.arange(batch, device=image_emb_BE.device) + rank * batch
    logits_i2t_BG = logit_scale * image_emb_BE @ all_text_GE.T
    logits_t2i_BG = logit_scale * text_emb_BE @ all_image_GE.T
    return (
        F.cross_entropy(logits_i2t_BG, targets_B) + F.cross_entropy(logits_t2i_BG, targets_B)
    ) / 2


def duplicate_mask(input_ids_BL: torch.Tensor, images_BHWC: torch.Tensor) -> torch.Tensor:
    """``[B, B]`` True where pair (i, j) shares the caption or the image (or i == j).

    Such a "negative" would be a false negative for ITM. Images are compared by a random
    projection fingerprint rather than element-wise, which would cost B^2 x pixels memory.
    """
    same_text_BB = (input_ids_BL[:, None, :] == input_ids_BL[None, :, :]).all(dim=-1)
    flat_BP = images_BHWC.flatten(1).to(torch.float64)
    generator = torch.Generator(device="cpu").manual_seed(0)
    weights_P = torch.rand(flat_BP.shape[1], generator=generator, dtype=torch.float64)
    fingerprint_B = flat_BP @ weights_P.to(flat_BP.device)
    same_image_BB = fingerprint_B[:, None] == fingerprint_B[None, :]
    return same_text_BB | same_image_BB


def sample_hard_negatives(similarity_BB: torch.Tensor, excluded_BB: torch.Tensor) -> torch.Tensor:
    """For each row, an index drawn with probability softmax(similarity) over allowed columns.

    Harder (more similar) negatives are drawn more often, as in ALBEF. A row with no allowed
    column (every sample identical) falls back to a uniformly random other index.
    """
    weights_BB = F.softmax(similarity_BB.float(), dim=1).masked_fill(excluded_BB, 0.0)
    empty_B = weights_BB.sum(dim=1) <= 0
    if empty_B.any():
        eye_BB = torch.eye(len(weights_BB), dtype=torch.bool, device=weights_BB.device)
        weights_BB[empty_B] = (~eye_BB[empty_B]).float() + 1e-12 * eye_BB[empty_B].float()
    return torch.multinomial(weights_BB, 1).squeeze(1)


def itm_loss(itm_logits_P2: torch.Tensor, positives: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy over [positives, then negatives]; also returns the matching accuracy."""
    labels_P = torch.zeros(itm_logits_P2.shape[0], dtype=torch.long, device=itm_logits_P2.device)
    labels_P[:positives] = 1
    accuracy = (itm_logits_P2.argmax(dim=1) == labels_P).float().mean()
    return F.cross_entropy(itm_logits_P2, labels_P), accuracy


def mask_tokens(
    input_ids_BL: torch.Tensor,
    attention_mask_BL: torch.Tensor,
    *,
    vocab_size: int,
    mask_id: int,
    special_ids: tuple[int, ...],
    probability: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: pick ``probability`` of real tokens; 80% [MASK], 10% random, 10% kept.

    Returns (masked ids, labels with IGNORE_INDEX where nothing is predicted). At least one
    token per batch is always picked so the loss is never empty.
    """
    maskable_BL = attention_mask_BL.bool()
    for special in special_ids:
        maskable_BL &= input_ids_BL != special
    picked_BL = torch.rand(input_ids_BL.shape, device=input_ids_BL.device) < probability
    picked_BL &= maskable_BL
    if not picked_BL.any() and maskable_BL.any():
        picked_BL.view(-1)[maskable_BL.view(-1).nonzero()[0]] = True
    labels_BL = input_ids_BL.masked_fill(~picked_BL, IGNORE_INDEX)
    roll_BL = torch.rand(input_ids_BL.shape, device=input_ids_BL.device)
    masked_BL = input_ids_BL.masked_fill(picked_BL & (roll_BL < 0.8), mask_id)
    random_BL = picked_BL & (roll_BL >= 0.8) & (roll_BL < 0.9)
    random_tokens_BL = torch.randint_like(input_ids_BL, vocab_size)
    masked_BL = torch.where(random_BL, random_tokens_BL, masked_BL)
    return masked_BL, labels_BL


def mlm_loss(logits_BLV: torch.Tensor, labels_BL: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(
        logits_BLV.flatten(0, 1).float(), labels_BL.flatten(), ignore_index=IGNORE_INDEX
    )
