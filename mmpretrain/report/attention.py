"""Figure 2: where in the image the fusion module looks for a caption's words.

For a few held-out pairs, each chosen word's attention over the ResNet feature-map regions
(mean over fusion layers and heads; word pieces averaged), upsampled to the input crop and laid
over it. The image and caption go through the same crop and tokenizer as training, so the maps
are what the trained model computes on that input.

Words are the caption's content words (no stopwords, no special tokens), and of those the ones
whose attention is most concentrated on one region: the words the model ties to a place.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmpretrain.data.shards import expand_shards, iter_shard
from mmpretrain.data.transforms import UnusableSampleError, prepare_sample
from mmpretrain.errors import CheckpointError, ReportError
from mmpretrain.pretrained import PretrainedModel, load_pretrained
from mmpretrain.report.figures import new_figure, save_png

FILE = "fig2_attention.png"
WORDS = 4  # word columns per pair, beside the image itself
CELL_IN = (2.0, 2.3)  # width, height of one image cell
# fmt: off
STOPWORDS = frozenset({
    "a", "an", "the", "and", "or", "of", "in", "on", "at", "to", "with", "by", "for", "from",
    "is", "are", "was", "were", "be", "this", "that", "these", "those", "it", "its", "there",
    "here", "some", "image", "picture", "photo",  # caption templates' framing words
})
# fmt: on


@dataclass(frozen=True)
class WordMap:
    word: str
    regions_hw: np.ndarray  # share of the word's attention on each feature-map region


@dataclass(frozen=True)
class PairAttention:
    image_HW3: np.ndarray  # uint8 crop, as the model saw it
    caption: str
    words: list[WordMap]  # the chosen words, in caption order
    global_share: float  # mean share of the chosen words' attention on the global image token


def figure_size_in(pairs: int) -> tuple[float, float]:
    return CELL_IN[0] * (1 + WORDS), CELL_IN[1] * pairs


def load_model(run_dir: Path) -> PretrainedModel:
    """The run's newest complete checkpoint, on CPU; a report-worded error when there is none."""
    try:
        return load_pretrained(run_dir, device="cpu")
    except CheckpointError as exc:
        reason = str(exc).removeprefix("--checkpoint: ")  # the CLI flag of eval, not ours
        raise ReportError(f"figure 2 needs the run's trained weights: {reason}") from exc


def held_out_pairs(
    model: PretrainedModel, pattern: str | None, count: int
) -> list[tuple[np.ndarray, str]]:
    """The first ``count`` usable (image, caption) pairs of ``pattern``, else ``data.val``.

    Read without Ray, with the training pipeline's own sample rules: a pair shown here is one
    the evaluation used.
    """
    data = model.config.data
    pattern = pattern or data.val
    if not pattern:
        raise ReportError("figure 2 needs held-out pairs: the run has no data.val; pass --data")
    pairs: list[tuple[np.ndarray, str]] = []
    for path in expand_shards(pattern):
        for _, members in iter_shard(path):
            try:
                pairs.append(prepare_sample({k.lower(): v for k, v in members.items()}, data))
            except UnusableSampleError:
                continue
            if len(pairs) == count:
                return pairs
    if not pairs:
        raise ReportError(f"figure 2: the shards of {pattern!r} hold no usable pair")
    return pairs


def whole_words(tokens: list[str]) -> list[tuple[str, list[int]]]:
    """Whole words and the token positions of their pieces (``##`` continues a word)."""
    words: list[tuple[str, list[int]]] = []
    for position, token in enumerate(tokens):
        if token.startswith("##") and words:
            text, positions = words[-1]
            words[-1] = (text + token[2:], [*positions, position])
        else:
            words.append((token, [position]))
    return words


def is_content_word(word: str) -> bool:
    return word.isalnum() and word.lower() not in STOPWORDS and not word.startswith("[")


@torch.no_grad()
def pair_attention(model: PretrainedModel, image_HW3: np.ndarray, caption: str) -> PairAttention:
    """The fusion module's attention from the caption's content words to the image regions."""
    encoder, device = model.encoder, model.device
    ids_1L, mask_1L = (
        torch.from_numpy(a).to(device)
        for a in model.tokenizer.encode([caption], model.config.data.max_text_len)
    )
    image_1ND, _ = encoder.encode_image(torch.tensor(image_HW3)[None].to(device))
    text_1LD, _ = encoder.encode_text(ids_1L, mask_1L)
    _, attention_1XHLN = encoder.fuse_with_attention(text_1LD, mask_1L, image_1ND)
    attention_LN = attention_1XHLN[0].float().mean(dim=(0, 1)).cpu()
    side = math.isqrt(attention_LN.shape[1] - 1)  # square crops: a side x side region grid

    length = int(mask_1L.sum())
    tokens = [model.tokenizer.backend.id_to_token(int(i)) for i in ids_1L[0, :length]]
    scored = []
    for order, (word, positions) in enumerate(whole_words(tokens)):
        if is_content_word(word):
            row_N = attention_LN[positions].mean(dim=0)
            scored.append((float(row_N[1:].max()), order, word, row_N))
    best: dict[str, tuple] = {}  # a word named twice ("a large ... a large") is shown once
    for item in sorted(scored, reverse=True):
        best.setdefault(item[2], item)
    chosen = sorted(list(best.values())[:WORDS], key=lambda item: item[1])
    return PairAttention(
        image_HW3=image_HW3,
        caption=caption,
        words=[WordMap(word, row_N[1:].view(side, side).numpy()) for _, _, word, row_N in chosen],
        global_share=float(np.mean([float(row_N[0]) for *_, row_N in chosen] or [0.0])),
    )


def upsample(regions_hw: np.ndarray, size: int) -> np.ndarray:
    """A region grid -> a ``size`` x ``size`` map, bilinear as the receptive fields overlap."""
    grid_11hw = torch.from_numpy(regions_hw)[None, None].float()
    map_11SS = F.interpolate(grid_11hw, size=(size, size), mode="bilinear", align_corners=False)
    return map_11SS[0, 0].numpy()


def plot_attention(
    run_dir: Path, out_dir: Path, pairs: int, data: str | None = None
) -> tuple[Path, dict]:
    """Draws the figure; returns its path and facts for the report's text."""
    model = load_model(run_dir)
    results = [
        pair_attention(model, image, text) for image, text in held_out_pairs(model, data, pairs)
    ]
    figure = new_figure(*figure_size_in(len(results)))
    axes = figure.subplots(len(results), 1 + WORDS, squeeze=False)
    size = model.config.data.image_size
    for row, result in zip(axes, results, strict=True):
        row[0].imshow(result.image_HW3)
        row[0].set_title(textwrap.fill(result.caption, 30), fontsize=7)
        top = max((float(w.regions_hw.max()) for w in result.words), default=1.0)
        for cell, word in zip(row[1:], result.words, strict=False):
            cell.imshow(result.image_HW3)
            cell.imshow(upsample(word.regions_hw, size), cmap="jet", alpha=0.5, vmin=0, vmax=top)
            cell.set_title(f"{word.word} (peak {word.regions_hw.max():.2f})", fontsize=8)
        for cell in row:
            cell.axis("off")
    fusion = model.config.model.fusion
    figure.suptitle(
        f"text->image attention of the {fusion.type} fusion "
        f"(mean of {fusion.layers} layers x {fusion.heads} heads)",
        fontsize=9,
    )
    grid = results[0].words[0].regions_hw.shape if results[0].words else (0, 0)
    facts = {
        "pairs": len(results),
        "data": data or model.config.data.val,
        "grid": f"{grid[0]}x{grid[1]}",
        "image_size": size,
        "fusion": fusion.type,
        "global_share": float(np.mean([r.global_share for r in results])),
    }
    return save_png(figure, out_dir / FILE), facts
