"""Evaluation metrics on hand-made similarities whose right answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmpretrain.config import ConfigError
from mmpretrain.evaluate.report import format_table
from mmpretrain.evaluate.retrieval import reranked_ranks, retrieval_metrics, top_candidates
from mmpretrain.evaluate.zeroshot import label_indices, resolve_class_names, zero_shot_metrics


def test_itm_rerank_reorders_only_the_shortlist() -> None:
    # Query 0: true candidate 0 is ITC-ranked third; query 1: true candidate outside the top 2.
    similarity = torch.tensor(
        [[0.5, 0.9, 0.8, 0.1], [0.9, 0.1, 0.8, 0.7], [0.1, 0.2, 0.9, 0.3], [0.4, 0.3, 0.2, 0.1]]
    )
    candidates = top_candidates(similarity, 3)
    assert candidates[0].tolist() == [1, 2, 0]
    # ITM is sure about query 0's true pair and puts it first.
    scores = torch.zeros(4, 3)
    scores[0] = torch.tensor([0.1, 0.2, 0.9])
    scores[2] = torch.tensor([0.3, 0.9, 0.8])  # query 2: the true pair (ITC first) drops to 3rd
    ranks = reranked_ranks(similarity, candidates, scores)
    assert ranks[0] == 0  # moved up from ITC rank 2
    assert ranks[1] == 3  # never in the shortlist: keeps its ITC rank
    assert ranks[2] == 2  # ITM disagreed with ITC
    assert ranks[3] == 3  # ITC's last, outside the shortlist


def test_zero_shot_accuracy_counts_nearest_prompt_and_skips_unlabelled() -> None:
    classes = torch.eye(3)
    images = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 0, 0], [0, 1.0, 0]])
    names = resolve_class_names(None, ["cat", "dog", "", "bird", "cat"])
    assert names == ["bird", "cat", "dog"]
    targets = label_indices(["bird", "cat", "", "cat", "dog"], names)
    assert targets.tolist() == [0, 1, -1, 1, 2]
    metrics = zero_shot_metrics(images, classes, targets)
    # Sample 0 (bird) and 1 (cat) are right; 3 (cat, looks like bird) and 4 (dog) are wrong.
    assert metrics["zeroshot_top1"] == pytest.approx(2 / 4)
    assert metrics["zeroshot_samples"] == 4 and metrics["zeroshot_unlabelled"] == 1
    assert metrics["zeroshot_chance@1"] == pytest.approx(1 / 3)
    assert "zeroshot_top5" not in metrics  # 3 classes: top-5 would be trivially 1


def test_integer_labels_index_the_configured_class_names(tmp_path) -> None:
    names_file = tmp_path / "classes.txt"
    names_file.write_text("circle\nsquare\n\ntriangle\n")
    names = resolve_class_names(str(names_file), [])
    assert names == ["circle", "square", "triangle"]
    assert label_indices(["2", "0", "7", "square"], names).tolist() == [2, 0, -1, 1]
    with pytest.raises(ConfigError, match=r"eval\.class_names"):
        resolve_class_names(str(tmp_path / "missing.txt"), [])


def test_table_shows_every_metric_family() -> None:
    emb = torch.nn.functional.normalize(torch.randn(20, 8), dim=-1)
    metrics = retrieval_metrics(emb, emb, (1, 5, 10))
    metrics.update(
        {f"i2t_rerank_recall@{k}": 1.0 for k in (1, 5, 10)}
        | {f"t2i_rerank_recall@{k}": 1.0 for k in (1, 5, 10)}
        | {"itm_accuracy": 0.75, "itm_accuracy_hard": 0.5}
        | {"zeroshot_top1": 0.5, "zeroshot_classes": 4.0}
        | {"zeroshot_samples": 20.0, "zeroshot_chance@1": 0.25}
    )
    table = format_table(metrics)
    for text in ("R@10", "ITM rerank", "ITM accuracy", "zero-shot over 4 classes", "0.050"):
        assert text in table, table


def test_held_out_pass_needs_only_batches_and_an_encoder(synth_data) -> None:
    """evaluate/heldout.py in one plain process: no Ray, no process group, any batching."""
    from mmpretrain.config import load_config
    from mmpretrain.data.shards import expand_shards, iter_shard
    from mmpretrain.data.tokenizer import load_tokenizer
    from mmpretrain.data.transforms import centre_square, flatten_to_rgb
    from mmpretrain.evaluate.heldout import evaluate
    from mmpretrain.train.builder import build_encoder

    cfg = load_config("tiny", [f"data.tokenizer={synth_data['tokenizer']}", "eval.rerank_k=4"])
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    torch.manual_seed(0)
    encoder = build_encoder(cfg, tokenizer)
    samples = [m for p in expand_shards(str(synth_data["val"])) for _, m in iter_shard(p)][:24]

    def batches(size: int):
        import io

        from PIL import Image

        for start in range(0, len(samples), size):
            part = samples[start : start + size]
            images = [
                centre_square(flatten_to_rgb(Image.open(io.BytesIO(m["jpg"]))), 64) for m in part
            ]
            ids, mask = tokenizer.encode([m["txt"].decode() for m in part], cfg.data.max_text_len)
            yield {
                "image": torch.from_numpy(np.stack(images)),
                "input_ids": torch.from_numpy(ids),
                "attention_mask": torch.from_numpy(mask),
                "label": [m["cls"].decode() for m in part],
            }

    by_eight = evaluate(encoder, batches(8), cfg, tokenizer, torch.device("cpu"))
    by_twelve = evaluate(encoder, batches(12), cfg, tokenizer, torch.device("cpu"))
    assert by_eight["candidates"] == 24 and by_eight["rerank_k"] == 4
    assert by_eight["zeroshot_samples"] == 24
    assert encoder.training  # evaluation puts the mode back
    for name, value in by_eight.items():  # batching changes nothing (eval mode, no dropout)
        assert by_twelve[name] == pytest.approx(value, abs=1e-6), name
