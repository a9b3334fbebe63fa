"""Mixing several shard sets by weight into one epoch's list of shards.

Weights act at the shard level, as WebDataset's mixing and OpenCLIP's upsampling factors do:
an epoch reads ``round(total_shards * weight / sum(weights))`` shards from each source, cycling
through that source's shards in a seeded order, so a small high-weight source is repeated and
a large low-weight one is subsampled. The per-epoch shard order is shuffled later by Ray Data.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


def mix_sources(sources: Sequence[tuple[Sequence[str], float]], seed: int) -> list[str]:
    if not sources:
        raise ValueError("no sources to mix")
    total = sum(len(paths) for paths, _ in sources)
    weight_sum = sum(weight for _, weight in sources)
    mixed: list[str] = []
    for index, (paths, weight) in enumerate(sources):
        if not paths:
            raise ValueError(f"data.sources[{index}] has no shards")
        order = list(paths)
        random.Random(f"{seed}:{index}").shuffle(order)
        count = max(1, round(total * weight / weight_sum))
        mixed.extend(order[k % len(order)] for k in range(count))
    return mixed
