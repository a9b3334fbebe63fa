"""ITC over 2 gloo ranks with gathered negatives equals the one-process loss on the whole batch.

Real torch.distributed processes (gloo on loopback); no Ray needed for this property.
"""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from mmpretrain.model.objectives import itc_loss

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
    results[rank] = (loss, image_grad, text_grad)
    dist.destroy_process_group()


def test_gathered_itc_matches_single_process_loss_and_gradients() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    results = mp.get_context("spawn").Manager().dict()
    mp.spawn(_worker, args=(port, results), nprocs=WORLD, join=True)
    full_loss, full_image_grad, full_text_grad = _loss_and_grads(*_inputs())
    for rank in range(WORLD):
        _, image_grad, text_grad = results[rank]
        rows = slice(rank * ROWS, (rank + 1) * ROWS)
        # Each rank's rows get every rank's loss term (W x the mean loss's gradient); DeepSpeed
        # averages parameter gradients over the W ranks, which brings it back to the full one.
        assert torch.allclose(image_grad, full_image_grad[rows] * WORLD, atol=1e-5)
        assert torch.allclose(text_grad, full_text_grad[rows] * WORLD, atol=1e-5)
    mean_loss = sum(results[r][0] for r in range(WORLD)) / WORLD
    assert torch.allclose(mean_loss, full_loss, atol=1e-6)
