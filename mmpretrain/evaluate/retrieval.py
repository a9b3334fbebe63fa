"""Image<->text retrieval recall@K from paired ITC embeddings.

Row i of the image and text embeddings is a true pair; every other row is a distractor, so the
chance level of recall@K over N candidates is K / N.
"""

from __future__ import annotations

import torch


def recall_at_k(similarity_QC: torch.Tensor, ks: tuple[int, ...]) -> dict[int, float]:
    """Share of queries (rows) whose true candidate (same index) ranks within the top K."""
    true_Q = similarity_QC.diagonal()
    rank_Q = (similarity_QC > true_Q[:, None]).sum(dim=1)  # 0 = ranked first
    return {k: (rank_Q < k).float().mean().item() for k in ks}


def retrieval_metrics(
    image_emb_NE: torch.Tensor, text_emb_NE: torch.Tensor, ks: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """Recall@K both ways plus the chance level for this many candidates."""
    if image_emb_NE.shape != text_emb_NE.shape or image_emb_NE.shape[0] < 2:
        raise ValueError(
            "retrieval needs matching image and text embeddings for >= 2 pairs,"
            f" got {tuple(image_emb_NE.shape)} and {tuple(text_emb_NE.shape)}"
        )
    similarity_NN = image_emb_NE.float() @ text_emb_NE.float().T
    candidates = similarity_NN.shape[0]
    metrics: dict[str, float] = {"candidates": float(candidates)}
    for direction, sim in (("i2t", similarity_NN), ("t2i", similarity_NN.T)):
        for k, value in recall_at_k(sim, ks).items():
            metrics[f"{direction}_recall@{k}"] = value
    for k in ks:
        metrics[f"chance@{k}"] = min(1.0, k / candidates)
    return metrics


def format_table(metrics: dict[str, float], ks: tuple[int, ...] = (1, 5)) -> str:
    lines = [
        f"retrieval over {int(metrics['candidates'])} held-out pairs",
        f"{'direction':<14}" + "".join(f"{'R@' + str(k):>9}" for k in ks),
    ]
    for direction, label in (("i2t", "image->text"), ("t2i", "text->image")):
        lines.append(
            f"{label:<14}" + "".join(f"{metrics[f'{direction}_recall@{k}']:>9.3f}" for k in ks)
        )
    lines.append(f"{'chance':<14}" + "".join(f"{metrics[f'chance@{k}']:>9.3f}" for k in ks))
    return "\n".join(lines)
