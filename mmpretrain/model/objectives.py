"""Pretraining objectives as functions of features: ITC, ITM with hard negatives, MLM.

All cross-rank communication of the objectives is the two gathers here (``gather_with_grad``
for features that train, ``gather_no_grad`` for ids, fingerprints and momentum features); nothing
else in the model talks to other ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from mmpretrain import distributed

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
    if not distributed.is_distributed():
        return x_BD
    return _GatherWithGrad.apply(x_BD)


def gather_no_grad(x_B: torch.Tensor) -> torch.Tensor:
    """Concatenates ``x`` from all ranks (rank order), for values no gradient flows through."""
    if not distributed.is_distributed():
        return x_B
    parts = [torch.empty_like(x_B) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x_B.contiguous())
    return torch.cat(parts, dim=0)


def global_rows(batch: int, device: torch.device) -> torch.Tensor:
    """Indices of this rank's rows in the gathered global batch."""
    return torch.arange(batch, device=device) + distributed.rank() * batch


def soft_cross_entropy(logits_BC: torch.Tensor, targets_BC: torch.Tensor) -> torch.Tensor:
    return -(F.log_softmax(logits_BC.float(), dim=-1) * targets_BC).sum(dim=-1).mean()


def itc_loss(
    image_emb_BE: torch.Tensor,
    text_emb_BE: torch.Tensor,
    logit_scale: torch.Tensor,
    momentum: tuple[torch.Tensor, torch.Tensor] | None = None,
    alpha: float = 0.0,
) -> torch.Tensor:
    """Symmetric InfoNCE of local rows against the global batch's embeddings as negatives.

    With ``momentum`` (the momentum encoders' image and text embeddings of the same batch) the
    one-hot targets are softened, as in ALBEF, to ``alpha`` x the momentum model's own
    similarity distribution: pairs it finds alike are not punished as hard negatives.
    """
    all_image_GE = gather_with_grad(image_emb_BE)
    all_text_GE = gather_with_grad(text_emb_BE)
    targets_B = global_rows(image_emb_BE.shape[0], image_emb_BE.device)
    logits_i2t_BG = logit_scale * image_emb_BE @ all_text_GE.T
    logits_t2i_BG = logit_scale * text_emb_BE @ all_image_GE.T
    if momentum is None:
        return (
            F.cross_entropy(logits_i2t_BG, targets_B) + F.cross_entropy(logits_t2i_BG, targets_B)
        ) / 2
    with torch.no_grad():
        m_image_BE, m_text_BE = momentum
        m_all_image_GE, m_all_text_GE = gather_no_grad(m_image_BE), gather_no_grad(m_text_BE)
        hard_BG = F.one_hot(targets_B, all_text_GE.shape[0]).float()
        soft_i2t_BG = F.softmax(logit_scale * m_image_BE @ m_all_text_GE.T, dim=1)
        soft_t2i_BG = F.softmax(logit_scale * m_text_BE @ m_all_image_GE.T, dim=1)
        targets_i2t_BG = alpha * soft_i2t_BG + (1 - alpha) * hard_BG
        targets_t2i_BG = alpha * soft_t2i_BG + (1 - alpha) * hard_BG
    return (
        soft_cross_entropy(logits_i2t_BG, targets_i2t_BG)
        + soft_cross_entropy(logits_t2i_BG, targets_t2i_BG)
    ) / 2


def image_fingerprint(images_BHWC: torch.Tensor) -> torch.Tensor:
    """One float64 per image, equal for identical images and (almost surely) only for them.

    A fixed random projection of the pixels: comparing images element-wise across a global
    batch would cost B x G x pixels memory.
    """
    flat_BP = images_BHWC.flatten(1).to(torch.float64)
    generator = torch.Generator(device="cpu").manual_seed(0)
    weights_P = torch.rand(flat_BP.shape[1], generator=generator, dtype=torch.float64)
    return flat_BP @ weights_P.to(flat_BP.device)


def duplicate_mask(
    input_ids_BL: torch.Tensor,
    fingerprint_B: torch.Tensor,
    all_input_ids_GL: torch.Tensor,
    all_fingerprint_G: torch.Tensor,
) -> torch.Tensor:
    """``[B, G]`` True where local pair i and global pair j share the caption or the image.

    Such a "negative" would be a false negative for ITM; the positive itself is included.
    """
    same_text_BG = (input_ids_BL[:, None, :] == all_input_ids_GL[None, :, :]).all(dim=-1)
    same_image_BG = fingerprint_B[:, None] == all_fingerprint_G[None, :]
    return same_text_BG | same_image_BG


def sample_hard_negatives(
    similarity_BG: torch.Tensor, excluded_BG: torch.Tensor, positives_B: torch.Tensor
) -> torch.Tensor:
    """For each row, a column drawn with probability softmax(similarity) over allowed columns.

    Harder (more similar) negatives are drawn more often, as in ALBEF. A row with no allowed
    column (every sample identical) falls back to a uniformly random column other than its
    positive.
    """
    weights_BG = F.softmax(similarity_BG.float(), dim=1).masked_fill(excluded_BG, 0.0)
    empty_B = weights_BG.sum(dim=1) <= 0
    if empty_B.any():
        others_BG = torch.ones_like(weights_BG)
        others_BG[torch.arange(len(weights_BG)), positives_B] = 0.0
        weights_BG[empty_B] = others_BG[empty_B]
    return torch.multinomial(weights_BG, 1).squeeze(1)


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


def mlm_loss(
    logits_BLV: torch.Tensor,
    labels_BL: torch.Tensor,
    momentum_logits_BLV: torch.Tensor | None = None,
    alpha: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy at the masked positions; with momentum logits, blended with ALBEF's
    distillation term (soft cross-entropy against the momentum model's prediction)."""
    hard = F.cross_entropy(
        logits_BLV.flatten(0, 1).float(), labels_BL.flatten(), ignore_index=IGNORE_INDEX
    )
    if momentum_logits_BLV is None:
        return hard
    picked_BL = labels_BL != IGNORE_INDEX
    soft_targets_MV = F.softmax(momentum_logits_BLV[picked_BL].float(), dim=-1)
    soft = soft_cross_entropy(logits_BLV[picked_BL], soft_targets_MV)
    return (1 - alpha) * hard + alpha * soft
