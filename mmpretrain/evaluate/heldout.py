"""Data-parallel held-out evaluation, for training runs and ``mmpretrain eval``.

Recall@K both ways from ITC embeddings, ITM re-ranking of each query's top k, ITM accuracy on
positives versus arbitrary and versus hardest negatives, and zero-shot classification where the
shards carry ``cls`` labels.

The held-out set is not split by Ray: every worker reads all of it in the same order and takes
every world-th batch, so the model work is divided and no pair is dropped to even out a split.
Every rank also runs the *same number* of forward passes, padding with repeats whose results it
throws away: under ZeRO-3 each forward gathers parameter shards from all ranks, and a rank that
stopped early would leave the others waiting forever.

It takes an iterable of collated batches and an encoder with ``encode_image``, ``encode_text``
and ``match_logits``, so it runs the same on Ray Train workers (their split of a Ray dataset)
and in one plain process; without a process group it is a one-rank evaluation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from mmpretrain import distributed
from mmpretrain.config import RunConfig
from mmpretrain.evaluate.retrieval import reranked_ranks, retrieval_metrics, top_candidates
from mmpretrain.evaluate.zeroshot import label_indices, resolve_class_names, zero_shot_metrics


class Encoder(Protocol):
    """What evaluation needs of the model (``mmpretrain.model.FusedEncoder`` has it)."""

    training: bool

    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def match_logits(
        self, text_BLD: torch.Tensor, mask_BL: torch.Tensor, image_BND: torch.Tensor
    ) -> torch.Tensor: ...

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...


class Tokenizer(Protocol):
    """What zero-shot prompts need (``mmpretrain.data.tokenizer.CaptionTokenizer`` has it)."""

    def encode(self, captions: Sequence[str], max_len: int) -> tuple[Any, Any]: ...


@dataclass
class HeldOutFeatures:
    """Everything the metrics need from one pass over the held-out pairs, in data order."""

    image_emb_NE: torch.Tensor
    text_emb_NE: torch.Tensor
    image_NRD: torch.Tensor  # region tokens, for ITM
    text_NLD: torch.Tensor  # text-encoder features, for ITM
    mask_NL: torch.Tensor
    input_ids_NL: torch.Tensor
    labels: list[str]


def _gather_lists(items: list[Any]) -> list[Any]:
    return [item for part in distributed.gather_objects(items) for item in part]


@torch.no_grad()
def collect_features(
    encoder: Encoder, batches: Iterable[dict[str, Any]], device: torch.device
) -> HeldOutFeatures:
    rank, world = distributed.rank(), distributed.world_size()
    mine: list[tuple[int, dict[str, Any]]] = []
    spare: dict[str, Any] | None = None  # any batch, to pad this rank's forward count with

    def encode(batch: dict[str, Any]) -> dict[str, Any]:
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        image_BND, image_emb_BE = encoder.encode_image(batch["image"].to(device))
        text_BLD, text_emb_BE = encoder.encode_text(ids, mask)
        return {
            "image_emb": image_emb_BE.float().cpu(),
            "text_emb": text_emb_BE.float().cpu(),
            "image": image_BND.float().cpu(),
            "text": text_BLD.float().cpu(),
            "mask": mask.cpu(),
            "ids": ids.cpu(),
            "labels": batch["label"],
        }

    for index, batch in enumerate(batches):
        spare = spare or batch
        if index % world == rank:
            mine.append((index, encode(batch)))
    for _ in range(distributed.max_across_ranks(len(mine)) - len(mine)):
        if spare is not None:
            encode(spare)

    ordered = [part for _, part in sorted(_gather_lists(mine), key=lambda item: item[0])]
    if not ordered:
        raise ValueError("the held-out shards yielded no usable pair")
    return HeldOutFeatures(
        image_emb_NE=torch.cat([p["image_emb"] for p in ordered]),
        text_emb_NE=torch.cat([p["text_emb"] for p in ordered]),
        image_NRD=torch.cat([p["image"] for p in ordered]),
        text_NLD=torch.cat([p["text"] for p in ordered]),
        mask_NL=torch.cat([p["mask"] for p in ordered]),
        input_ids_NL=torch.cat([p["ids"] for p in ordered]),
        labels=[label for p in ordered for label in p["labels"]],
    )


@torch.no_grad()
def match_scores(
    encoder: Encoder,
    features: HeldOutFeatures,
    image_index_P: torch.Tensor,
    text_index_P: torch.Tensor,
    chunk: int,
    device: torch.device,
) -> torch.Tensor:
    """ITM probability that image ``image_index[p]`` and caption ``text_index[p]`` belong
    together, for every pair p, with the pairs split across ranks in chunks."""
    rank, world = distributed.rank(), distributed.world_size()
    chunks = max(1, -(-len(image_index_P) // chunk))
    scores: list[tuple[int, torch.Tensor]] = []
    for round_index in range(-(-chunks // world)):
        chunk_index = round_index * world + rank
        padding = chunk_index >= chunks  # keep forward counts equal; result thrown away
        start = 0 if padding else chunk_index * chunk
        images_P = image_index_P[start : start + chunk]
        texts_P = text_index_P[start : start + chunk]
        logits_P2 = encoder.match_logits(
            features.text_NLD[texts_P].to(device),
            features.mask_NL[texts_P].to(device),
            features.image_NRD[images_P].to(device),
        )
        if not padding:
            scores.append((chunk_index, F.softmax(logits_P2.float(), dim=1)[:, 1].cpu()))
    ordered = sorted(_gather_lists(scores), key=lambda item: item[0])
    return torch.cat([part for _, part in ordered]) if ordered else torch.zeros(0)


def hardest_negatives(similarity_NN: torch.Tensor, input_ids_NL: torch.Tensor) -> torch.Tensor:
    """For each image, the most ITC-similar caption that is not its own nor a copy of it."""
    same_caption_NN = (input_ids_NL[:, None, :] == input_ids_NL[None, :, :]).all(dim=-1)
    return similarity_NN.masked_fill(same_caption_NN, -torch.inf).argmax(dim=1)


@torch.no_grad()
def class_embeddings(
    encoder: Encoder,
    class_names: list[str],
    cfg: RunConfig,
    tokenizer: Tokenizer,
    device: torch.device,
) -> torch.Tensor:
    """ITC text embeddings of one prompt per class (every rank embeds all: same forwards)."""
    prompts = [cfg.eval.prompt_template.format(name) for name in class_names]
    parts = []
    for start in range(0, len(prompts), cfg.data.batch_size):
        ids, mask = tokenizer.encode(
            prompts[start : start + cfg.data.batch_size], cfg.data.max_text_len
        )
        _, emb = encoder.encode_text(
            torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
        )
        parts.append(emb.float().cpu())
    return torch.cat(parts)


def evaluate(
    encoder: Encoder,
    batches: Iterable[dict[str, Any]],
    cfg: RunConfig,
    tokenizer: Tokenizer,
    device: torch.device,
) -> dict[str, float]:
    """Collective: every rank calls it with the whole held-out set in the same order, and
    every rank gets the same metrics back."""
    was_training = encoder.training
    encoder.eval()
    try:
        features = collect_features(encoder, batches, device)
        metrics = retrieval_metrics(features.image_emb_NE, features.text_emb_NE, tuple(cfg.eval.ks))
        metrics.update(_matching_metrics(encoder, features, cfg, device))
        if any(features.labels):
            names = resolve_class_names(
                cfg.eval.class_names or cfg.data.class_names, features.labels
            )
            class_emb_CE = class_embeddings(encoder, names, cfg, tokenizer, device)
            metrics.update(
                zero_shot_metrics(
                    features.image_emb_NE, class_emb_CE, label_indices(features.labels, names)
                )
            )
    finally:
        encoder.train(was_training)
    return metrics


def _matching_metrics(
    encoder: Encoder, features: HeldOutFeatures, cfg: RunConfig, device: torch.device
) -> dict[str, float]:
    """ITM accuracy and (with eval.rerank_k) re-ranked recall, from one batch of pair scores."""
    similarity_NN = features.image_emb_NE @ features.text_emb_NE.T
    count = len(similarity_NN)
    everyone_N = torch.arange(count)
    # Two kinds of negative caption per image: an arbitrary other one (a fixed shift, so runs
    # compare), and the one ITC finds most similar (what re-ranking has to tell apart).
    shifted_N = (everyone_N + count // 2) % count
    hardest_N = hardest_negatives(similarity_NN, features.input_ids_NL)
    image_index = [everyone_N, everyone_N, everyone_N]
    text_index = [everyone_N, shifted_N, hardest_N]
    k = min(cfg.eval.rerank_k, count)
    if k:
        i2t_candidates_NK = top_candidates(similarity_NN, k)
        t2i_candidates_NK = top_candidates(similarity_NN.T, k)
        image_index += [everyone_N.repeat_interleave(k), t2i_candidates_NK.flatten()]
        text_index += [i2t_candidates_NK.flatten(), everyone_N.repeat_interleave(k)]
    scores_P = match_scores(
        encoder,
        features,
        torch.cat(image_index),
        torch.cat(text_index),
        chunk=2 * cfg.data.batch_size,
        device=device,
    )
    positive_N, shifted_score_N, hardest_score_N, rerank_P = scores_P.split(
        [count, count, count, len(scores_P) - 3 * count]
    )
    metrics = {
        "itm_accuracy": torch.cat([positive_N > 0.5, shifted_score_N <= 0.5]).float().mean().item(),
        "itm_accuracy_hard": torch.cat([positive_N > 0.5, hardest_score_N <= 0.5])
        .float()
        .mean()
        .item(),
    }
    if k:
        i2t_scores_NK, t2i_scores_NK = rerank_P.view(2, count, k)
        for direction, sim, candidates, scores in (
            ("i2t", similarity_NN, i2t_candidates_NK, i2t_scores_NK),
            ("t2i", similarity_NN.T, t2i_candidates_NK, t2i_scores_NK),
        ):
            ranks_N = reranked_ranks(sim, candidates, scores)
            for cutoff in cfg.eval.ks:
                metrics[f"{direction}_rerank_recall@{cutoff}"] = (
                    (ranks_N < cutoff).float().mean().item()
                )
        metrics["rerank_k"] = float(k)
    return metrics
