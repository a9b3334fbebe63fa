"""Data-parallel retrieval evaluation on the train workers.

The held-out set is not split by Ray (every worker sees all of it, in the same order); each rank
embeds every world-th batch and the embeddings are gathered, so the model work is divided and
no pair is dropped to even out the split.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from mmpretrain.data.pipeline import collate_batch
from mmpretrain.evaluate.retrieval import retrieval_metrics
from mmpretrain.model import PretrainingTask


@torch.no_grad()
def evaluate_retrieval(
    task: PretrainingTask, val_data: Any, batch_size: int, device: torch.device
) -> dict[str, float]:
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    was_training = task.training
    task.eval()
    stripes: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    for index, batch in enumerate(
        val_data.iter_torch_batches(batch_size=batch_size, collate_fn=collate_batch)
    ):
        if index % world != rank:
            continue
        image_emb, text_emb = task.embed(
            batch["image"].to(device),
            batch["input_ids"].to(device),
            batch["attention_mask"].to(device),
        )
        stripes.append((index, image_emb.float().cpu(), text_emb.float().cpu()))
    task.train(was_training)

    gathered: list[list[tuple[int, torch.Tensor, torch.Tensor]]] = [stripes]
    if world > 1:
        gathered = [[] for _ in range(world)]
        dist.all_gather_object(gathered, stripes)
    ordered = sorted((item for part in gathered for item in part), key=lambda item: item[0])
    image_emb_NE = torch.cat([item[1] for item in ordered])
    text_emb_NE = torch.cat([item[2] for item in ordered])
    return retrieval_metrics(image_emb_NE, text_emb_NE, ks=(1, 5))
