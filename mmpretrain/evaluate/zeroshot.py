"""Zero-shot classification: an image's class is the prompt ("a photo of a {}") it embeds
nearest to. No training on the labels; only the class names and the ITC space."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from mmpretrain.config import ConfigError


def resolve_class_names(configured: list[str] | str | None, labels: Sequence[str]) -> list[str]:
    """``eval.class_names`` as a list (inline, or a file with one per line), else the distinct
    labels found in the data, sorted."""
    if isinstance(configured, list):
        return configured
    if isinstance(configured, str):
        path = Path(configured)
        if not path.is_file():
            raise ConfigError(f"eval.class_names: {configured!r} is neither a list nor a file")
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not names:
            raise ConfigError(f"eval.class_names: {configured!r} holds no class names")
        return names
    return sorted({label for label in labels if label})


def label_indices(labels: Sequence[str], class_names: Sequence[str]) -> torch.Tensor:
    """Class index per sample: an integer label indexes ``class_names``, a text label is looked
    up by name; -1 where a sample has no label or one that names no class."""
    lookup = {name: index for index, name in enumerate(class_names)}
    indices = []
    for label in labels:
        if label.isdigit() and label not in lookup:
            index = int(label)
            indices.append(index if index < len(class_names) else -1)
        else:
            indices.append(lookup.get(label, -1))
    return torch.tensor(indices, dtype=torch.long)


def zero_shot_metrics(
    image_emb_NE: torch.Tensor, class_emb_CE: torch.Tensor, targets_N: torch.Tensor
) -> dict[str, float]:
    """Top-1 (and top-5 where there are more than 5 classes) accuracy over labelled samples."""
    labelled_N = targets_N >= 0
    classes = class_emb_CE.shape[0]
    scores_NC = image_emb_NE[labelled_N].float() @ class_emb_CE.float().T
    targets = targets_N[labelled_N]
    metrics = {
        "zeroshot_samples": float(labelled_N.sum()),
        "zeroshot_unlabelled": float((~labelled_N).sum()),
        "zeroshot_classes": float(classes),
        "zeroshot_chance@1": 1.0 / classes,
    }
    if len(targets) == 0:
        return metrics
    for k in (1, 5):
        if k == 1 or classes > 5:
            top_NK = scores_NC.topk(k, dim=1).indices
            hit = (top_NK == targets[:, None]).any(dim=1).float().mean().item()
            metrics[f"zeroshot_top{k}"] = hit
    return metrics
