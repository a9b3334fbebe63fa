"""Image<->text retrieval recall@K from ITC similarities, with optional ITM re-ranking.

Row i of the image and text embeddings is a true pair; every other row is a distractor, so the
chance level of recall@K over N candidates is K / N.
"""

from __future__ import annotations

import torch


def true_ranks(similarity_QC: torch.Tensor) -> torch.Tensor:
    """Rank of each query's true candidate (same index) among all candidates; 0 = first."""
    true_Q = similarity_QC.diagonal()
    return (similarity_QC > true_Q[:, None]).sum(dim=1)


def recall_at_k(similarity_QC: torch.Tensor, ks: tuple[int, ...]) -> dict[int, float]:
    """Share of queries (rows) whose true candidate ranks within the top K."""
    rank_Q = true_ranks(similarity_QC)
    return {k: (rank_Q < k).float().mean().item() for k in ks}


def top_candidates(similarity_QC: torch.Tensor, k: int) -> torch.Tensor:
    """``[Q, k]`` candidate indices of each query's k most ITC-similar candidates, best first."""
    return similarity_QC.topk(min(k, similarity_QC.shape[1]), dim=1).indices


def reranked_ranks(
    similarity_QC: torch.Tensor, candidates_QK: torch.Tensor, match_scores_QK: torch.Tensor
) -> torch.Tensor:
    """True-candidate ranks after re-ordering each query's top k by ITM score (ALBEF k_test).

    A true candidate inside the top k takes its place in the ITM order; one outside keeps its
    ITC rank, which is k or worse, so re-ranking only ever reorders the shortlist.
    """
    queries = torch.arange(len(similarity_QC))
    in_top_QK = candidates_QK == queries[:, None]
    true_score_Q = torch.where(in_top_QK, match_scores_QK, -torch.inf).amax(dim=1)
    itm_rank_Q = (match_scores_QK > true_score_Q[:, None]).sum(dim=1)
    return torch.where(in_top_QK.any(dim=1), itm_rank_Q, true_ranks(similarity_QC))


def retrieval_metrics(
    image_emb_NE: torch.Tensor, text_emb_NE: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@K both ways, their mean, and the chance level for this many candidates."""
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
        # One number for both directions: what sweeps rank trials by by default.
        metrics[f"mean_recall@{k}"] = (metrics[f"i2t_recall@{k}"] + metrics[f"t2i_recall@{k}"]) / 2
        metrics[f"chance@{k}"] = min(1.0, k / candidates)
    return metrics
