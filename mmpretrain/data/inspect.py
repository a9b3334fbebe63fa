"""What is in a set of shards, and how much of it training could use.

Runs the same per-sample rules as the training pipeline (``prepare_sample``), so a sample that
``inspect`` calls bad is exactly one that training would skip, for the same reason.
"""

from __future__ import annotations

import io
import sys
import tarfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmpretrain.config import DataConfig
from mmpretrain.data.quality import SEEN, SKIPPED_PREFIX, bad_fraction
from mmpretrain.data.shards import expand_shards, iter_shard
from mmpretrain.data.transforms import IMAGE_EXTENSIONS, SkipReason, UnusableSampleError
from mmpretrain.data.transforms import prepare_sample as check_sample

TRUNCATED_TAR = SkipReason.TRUNCATED_TAR.value


@dataclass
class ShardSummary:
    path: str
    counts: Counter = field(default_factory=Counter)
    extensions: Counter = field(default_factory=Counter)
    caption_words: list[int] = field(default_factory=list)
    image_sides: list[int] = field(default_factory=list)  # shorter side of usable images
    error: str | None = None


def _image_side(members: dict[str, Any]) -> int:
    payload = next(members[ext] for ext in IMAGE_EXTENSIONS if members.get(ext) is not None)
    with Image.open(io.BytesIO(payload)) as image:
        return min(image.size)


def inspect_shard(path: str, cfg: DataConfig) -> ShardSummary:
    summary = ShardSummary(path=path)
    try:
        for _, raw_members in iter_shard(path):
            members = {ext.lower(): value for ext, value in raw_members.items()}
            summary.extensions.update(members.keys())
            summary.counts[SEEN] += 1
            try:
                _, caption = check_sample(members, cfg)
            except UnusableSampleError as bad:
                summary.counts[SKIPPED_PREFIX + bad.reason.value] += 1
                continue
            summary.caption_words.append(len(caption.split()))
            summary.image_sides.append(_image_side(members))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        # What came before the damage was counted above; the sample cut by it is counted here.
        summary.error = f"damaged after {summary.counts[SEEN]} samples: {exc}"
        summary.counts[SEEN] += 1
        summary.counts[SKIPPED_PREFIX + TRUNCATED_TAR] += 1
    return summary


def _distribution(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    array = np.asarray(values)
    return {
        "min": float(array.min()),
        "median": float(np.median(array)),
        "p90": float(np.percentile(array, 90)),
        "max": float(array.max()),
    }


def inspect_shards(pattern: str, cfg: DataConfig) -> dict[str, Any]:
    """A JSON-ready report: per shard and in total, counts by reason and distributions."""
    from tqdm import tqdm  # a progress bar on a terminal, as `data convert` shows

    paths = expand_shards(pattern)
    bar = tqdm(paths, unit="shard", desc="inspect", disable=not sys.stderr.isatty())
    shards = [inspect_shard(path, cfg) for path in bar]
    total: Counter = Counter()
    extensions: Counter = Counter()
    words: list[int] = []
    sides: list[int] = []
    for shard in shards:
        total.update(shard.counts)
        extensions.update(shard.extensions)
        words.extend(shard.caption_words)
        sides.extend(shard.image_sides)
    return {
        "pattern": pattern,
        "shards": [
            {
                "path": shard.path,
                "samples": shard.counts[SEEN],
                "usable": shard.counts[SEEN] - sum(_skips(shard.counts).values()),
                "skipped": _skips(shard.counts),
                "extensions": dict(sorted(shard.extensions.items())),
                "error": shard.error,
            }
            for shard in shards
        ],
        "samples": total[SEEN],
        "skipped": _skips(total),
        "bad_fraction": bad_fraction(total),
        "extensions": dict(sorted(extensions.items())),
        "caption_words": _distribution(words),
        "image_shorter_side": _distribution(sides),
        "damaged_shards": [shard.path for shard in shards if shard.error],
    }


def _skips(counts: Counter) -> dict[str, int]:
    return {
        key.removeprefix(SKIPPED_PREFIX): value
        for key, value in sorted(counts.items())
        if key.startswith(SKIPPED_PREFIX) and value
    }


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{'shard':<40} {'samples':>8} {'usable':>8}  skipped by reason"]
    for shard in report["shards"]:
        reasons = ", ".join(f"{k}={v}" for k, v in shard["skipped"].items()) or "-"
        if shard["error"]:
            reasons = f"{reasons}; {shard['error']}"
        lines.append(
            f"{Path(shard['path']).name:<40} {shard['samples']:>8} {shard['usable']:>8}  {reasons}"
        )
    lines.append(
        f"total: {report['samples']} samples in {len(report['shards'])} shards, "
        f"{report['bad_fraction']:.2%} unusable"
    )
    lines.append("extensions: " + ", ".join(f"{k}={v}" for k, v in report["extensions"].items()))
    for name in ("caption_words", "image_shorter_side"):
        stats = report[name]
        if stats:
            lines.append(f"{name}: " + ", ".join(f"{k} {v:g}" for k, v in stats.items()))
    return "\n".join(lines)
