"""Cross-rank objectives on 2 real gloo ranks (loopback; no Ray needed for these properties).

ITC with gathered negatives equals the one-process loss on the whole batch, gradients included;
ITM negatives are drawn from the whole global batch and never duplicate the positive.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from mmpretrain.model.objectives import (
    duplicate_mask,
    gather_no_grad,
    global_rows,
    image_fingerprint,
    itc_loss,
    sample_hard_negatives,
)

WORLD = 2
ROWS = 4


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(WORLD * ROWS, 8, generator=generator)
    texts = torch.randn(WORLD * ROWS, 8, generator=generator)
    return images, texts, torch.tensor(5.0)


def _loss_and_grads(images, texts, scale):
    images, texts = images.clone().requires_grad_(), texts.clone().requires_grad_()
    loss = itc_loss(F.normalize(images, dim=-1), F.normalize(texts, dim=-1), scale)
    loss.backward()
    return loss.detach(), images.grad, texts.grad


def _worker(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    images, texts, scale = _inputs()
    rows = slice(rank * ROWS, (rank + 1) * ROWS)
    loss, image_grad, text_grad = _loss_and_grads(images[rows], texts[rows], scale)
    results[rank] = (loss, image_grad, text_grad, *_itm_negatives(rank))
    dist.destroy_process_group()


def _global_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """Captions and images of the global batch, with duplicates across the two ranks."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 50, (WORLD * ROWS, 6), generator=generator)
    images = torch.randint(0, 256, (WORLD * ROWS, 4, 4, 3), generator=generator, dtype=torch.uint8)
    ids[1] = ids[ROWS + 2]  # rank 0's row 1 has the caption of rank 1's row 2
    images[0] = images[ROWS + 3]  # rank 0's row 0 has the image of rank 1's row 3
    return ids, images


def _itm_negatives(rank: int) -> tuple[torch.Tensor, set[int]]:
    ids, images = _global_pairs()
    rows = slice(rank * ROWS, (rank + 1) * ROWS)
    fingerprint = image_fingerprint(images[rows])
    excluded = duplicate_mask(
        ids[rows], fingerprint, gather_no_grad(ids[rows]), gather_no_grad(fingerprint)
    )
    positives = global_rows(ROWS, torch.device("cpu"))
    similarity = excluded.float() * 50.0  # the false negatives look the most alike
    drawn: set[int] = set()
    for _ in range(200):
        negatives = sample_hard_negatives(similarity, excluded, positives)
        assert not excluded[torch.arange(ROWS), negatives].any()
        assert (negatives != positives).all()
        drawn.update(negatives.tolist())
    return excluded, drawn


@pytest.fixture(scope="module")
def two_rank_results() -> dict:
    """Both properties come from one 2-process run: starting processes is the slow part."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    results = mp.get_context("spawn").Manager().dict()
    mp.spawn(_worker, args=(port, results), nprocs=WORLD, join=True)
    return dict(results)


def test_gathered_itc_matches_single_process_loss_and_gradients(two_rank_results) -> None:
    results = two_rank_results
    full_loss, full_image_grad, full_text_grad = _loss_and_grads(*_inputs())
    for rank in range(WORLD):
        _, image_grad, text_grad, *_ = results[rank]
        rows = slice(rank * ROWS, (rank + 1) * ROWS)
        # Each rank's rows get every rank's loss term (W x the mean loss's gradient); DeepSpeed
        # averages parameter gradients over the W ranks, which brings it back to the full one.
        assert torch.allclose(image_grad, full_image_grad[rows] * WORLD, atol=1e-5)
        assert torch.allclose(text_grad, full_text_grad[rows] * WORLD, atol=1e-5)
    mean_loss = sum(results[r][0] for r in range(WORLD)) / WORLD
    assert torch.allclose(mean_loss, full_loss, atol=1e-6)


def test_itm_negatives_come_from_the_global_batch_and_skip_cross_rank_duplicates(
    two_rank_results,
) -> None:
    results = two_rank_results
    excluded0, drawn0 = results[0][3], results[0][4]
    excluded1, drawn1 = results[1][3], results[1][4]
    assert excluded0.shape == (ROWS, WORLD * ROWS)
    assert excluded0[1, ROWS + 2] and excluded0[0, ROWS + 3]  # rank 0 sees rank 1's copies
    assert excluded1[2, 1] and excluded1[3, 0]  # and rank 1 sees rank 0's
    # Negatives are drawn from the other rank's rows too, not only the local batch.
    assert drawn0 & set(range(ROWS, WORLD * ROWS)) and drawn1 & set(range(ROWS))
