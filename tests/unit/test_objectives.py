from __future__ import annotations

import itertools
import math

import pytest
import torch

from mmpretrain.evaluate.retrieval import recall_at_k, retrieval_metrics
from mmpretrain.model.objectives import (
    IGNORE_INDEX,
    duplicate_mask,
    itc_loss,
    mask_tokens,
    sample_hard_negatives,
)
from mmpretrain.train.schedule import warmup_cosine


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
    excluded = duplicate_mask(ids, images)
    assert excluded.diagonal().all()
    assert excluded[3, 7] and excluded[7, 3] and excluded[5, 9] and excluded[9, 5]
    assert excluded.sum() == 12 + 4
    # Make the duplicates the most similar pairs: they must still never be drawn.
    similarity = torch.zeros(12, 12)
    similarity[3, 7] = similarity[7, 3] = similarity[5, 9] = similarity[9, 5] = 50.0
    similarity.fill_diagonal_(50.0)
    for _ in range(200):
        negatives = sample_hard_negatives(similarity, excluded)
        assert not excluded[torch.arange(12), negatives].any()


def test_hard_negatives_prefer_similar_samples() -> None:
    torch.manual_seed(0)
    similarity = torch.zeros(4, 4)
    similarity[0, 2] = 5.0
    excluded = torch.eye(4, dtype=torch.bool)
    draws = torch.stack([sample_hard_negatives(similarity, excluded)[0] for _ in range(300)])
    assert (draws == 2).float().mean() > 0.8


def test_all_identical_batch_still_gets_a_negative_other_than_itself() -> None:
    excluded = torch.ones(3, 3, dtype=torch.bool)
    negatives = sample_hard_negatives(torch.zeros(3, 3), excluded)
    assert (negatives != torch.arange(3)).all()


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
