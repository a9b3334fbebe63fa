from __future__ import annotations

import itertools
import math

import pytest
import torch

from mmpretrain.evaluate.retrieval import recall_at_k, retrieval_metrics
from mmpretrain.model.objectives import (
    IGNORE_INDEX,
    duplicate_mask,
    image_fingerprint,
    itc_loss,
    mask_tokens,
    mlm_loss,
    sample_hard_negatives,
)
from mmpretrain.train.schedule import warmup_cosine

EVERY_ROW = torch.arange(12)


def test_itc_is_low_for_matched_pairs_and_chance_for_random() -> None:
    emb = torch.nn.functional.normalize(torch.randn(16, 32), dim=-1)
    assert itc_loss(emb, emb, torch.tensor(100.0)).item() < 0.05
    other = torch.nn.functional.normalize(torch.randn(16, 32), dim=-1)
    assert itc_loss(emb, other, torch.tensor(1e-3)).item() == pytest.approx(math.log(16), 1e-3)


def test_hard_negatives_are_never_the_positive_or_a_duplicate() -> None:
    torch.manual_seed(0)
    ids = torch.randint(5, 50, (12, 10))
    ids[3] = ids[7]  # the same caption twice
    images = torch.randint(0, 255, (12, 8, 8, 3), dtype=torch.uint8)
    images[5] = images[9]  # the same image twice
    fingerprint = image_fingerprint(images)
    excluded = duplicate_mask(ids, fingerprint, ids, fingerprint)
    assert excluded.diagonal().all()
    assert excluded[3, 7] and excluded[7, 3] and excluded[5, 9] and excluded[9, 5]
    assert excluded.sum() == 12 + 4
    # Make the duplicates the most similar pairs: they must still never be drawn.
    similarity = torch.zeros(12, 12)
    similarity[3, 7] = similarity[7, 3] = similarity[5, 9] = similarity[9, 5] = 50.0
    similarity.fill_diagonal_(50.0)
    for _ in range(200):
        negatives = sample_hard_negatives(similarity, excluded, EVERY_ROW)
        assert not excluded[torch.arange(12), negatives].any()


def test_hard_negatives_prefer_similar_samples() -> None:
    torch.manual_seed(0)
    similarity = torch.zeros(4, 4)
    similarity[0, 2] = 5.0
    excluded = torch.eye(4, dtype=torch.bool)
    rows = torch.arange(4)
    draws = torch.stack([sample_hard_negatives(similarity, excluded, rows)[0] for _ in range(300)])
    assert (draws == 2).float().mean() > 0.8


def test_all_identical_batch_still_gets_a_negative_other_than_itself() -> None:
    excluded = torch.ones(3, 3, dtype=torch.bool)
    for _ in range(20):
        negatives = sample_hard_negatives(torch.zeros(3, 3), excluded, torch.arange(3))
        assert (negatives != torch.arange(3)).all()


def test_momentum_targets_soften_itc_only_by_alpha() -> None:
    torch.manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    scale = torch.tensor(10.0)
    hard = itc_loss(image, text, scale)
    # alpha = 0: the momentum model's opinion is ignored.
    assert itc_loss(image, text, scale, momentum=(image, text), alpha=0.0) == pytest.approx(
        hard.item()
    )
    # A momentum model that finds every pair alike gives uniform targets at alpha = 1.
    flat = torch.nn.functional.normalize(torch.ones(8, 16), dim=-1)
    soft = itc_loss(image, text, scale, momentum=(flat, flat), alpha=1.0)

    def uniform_target_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return -torch.log_softmax(scale * a @ b.T, dim=1).mean()

    expected = (uniform_target_loss(image, text) + uniform_target_loss(text, image)) / 2
    assert soft.item() == pytest.approx(expected.item(), rel=1e-5)
    assert soft.item() != pytest.approx(hard.item(), rel=1e-2)


def test_mlm_distillation_blends_hard_and_soft_targets() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.full((2, 5), IGNORE_INDEX)
    labels[0, 1], labels[1, 3] = 4, 7
    hard = mlm_loss(logits, labels)
    # Momentum logits identical to the hard labels' one-hot (very peaked): same loss.
    peaked = torch.full((2, 5, 11), -1e4)
    peaked[0, 1, 4] = peaked[1, 3, 7] = 1e4
    assert mlm_loss(logits, labels, peaked, alpha=0.4).item() == pytest.approx(hard.item(), 1e-5)
    blended = mlm_loss(logits, labels, torch.zeros(2, 5, 11), alpha=0.5)
    uniform = -torch.log_softmax(logits[labels != IGNORE_INDEX], dim=-1).mean(dim=-1).mean()
    assert blended.item() == pytest.approx(0.5 * hard.item() + 0.5 * uniform.item(), 1e-5)


def test_masking_never_touches_special_or_padding_tokens() -> None:
    torch.manual_seed(0)
    ids = torch.randint(10, 100, (64, 20))
    ids[:, 0], ids[:, 15], ids[:, 16:] = 2, 3, 0  # [CLS] ... [SEP] [PAD]...
    attention = (ids != 0).long()
    masked, labels = mask_tokens(
        ids, attention, vocab_size=100, mask_id=4, special_ids=(0, 2, 3), probability=0.15
    )
    picked = labels != IGNORE_INDEX
    assert not picked[:, 0].any() and not picked[:, 15:].any()
    assert (labels[picked] == ids[picked]).all()
    assert (masked[~picked] == ids[~picked]).all()
    share = picked.float().sum() / (64 * 14)
    assert 0.10 < share < 0.20
    assert (masked[picked] == 4).float().mean() > 0.7


def test_recall_counts_rank_of_the_true_pair() -> None:
    similarity = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.5, 0.1], [0.3, 0.2, 0.1]])
    assert recall_at_k(similarity, (1, 2)) == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3)}


def test_retrieval_metrics_perfect_and_chance() -> None:
    emb = torch.nn.functional.normalize(torch.randn(50, 16), dim=-1)
    metrics = retrieval_metrics(emb, emb)
    assert metrics["i2t_recall@1"] == metrics["t2i_recall@1"] == 1.0
    assert metrics["chance@1"] == pytest.approx(1 / 50) and metrics["chance@5"] == 0.1
    with pytest.raises(ValueError, match="matching image and text"):
        retrieval_metrics(emb, emb[:10])


def test_warmup_then_cosine_to_the_floor() -> None:
    schedule = [warmup_cosine(s, warmup_steps=10, max_steps=110, min_ratio=0.1) for s in range(111)]
    assert schedule[0] == pytest.approx(0.1) and schedule[9] == pytest.approx(1.0)
    assert schedule[60] == pytest.approx(0.55)
    assert schedule[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(schedule[10:]))
