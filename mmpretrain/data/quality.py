"""Counting seen and skipped samples across every data task of a run.

Data tasks run in many processes on many nodes; a small named actor adds up what each batch
reports, so a skipped sample is never lost from the books. The trainer reads the totals into
``metrics.jsonl`` and stops the run when ``data.max_bad_fraction`` is passed.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Mapping

import ray

from mmpretrain.data.run_actors import create_on_driver_node, lookup
from mmpretrain.errors import DataQualityError

SEEN = "seen"
SKIPPED_PREFIX = "skipped_"


@ray.remote(num_cpus=0)
class QualityCounter:
    def __init__(self) -> None:
        self._counts: Counter = Counter()

    def add(self, counts: Mapping[str, int]) -> None:
        self._counts.update(counts)

    def snapshot(self) -> dict[str, int]:
        return dict(self._counts)


def counter_name(run_name: str, split: str) -> str:
    """Unique per launch, so concurrent runs on one cluster never share books."""
    return f"mmpretrain-quality-{run_name}-{split}-{uuid.uuid4().hex[:8]}"


def create_counter(name: str) -> ray.actor.ActorHandle:
    return create_on_driver_node(QualityCounter, name)


def report(name: str | None, counts: Mapping[str, int]) -> None:
    """Fire-and-forget from a data task; a no-op outside a counted run (tests, tools)."""
    if name:
        lookup(name).add.remote(dict(counts))


def snapshot(name: str) -> dict[str, int]:
    return ray.get(lookup(name).snapshot.remote())


def bad_fraction(counts: Mapping[str, int]) -> float:
    seen = counts.get(SEEN, 0)
    skipped = sum(v for k, v in counts.items() if k.startswith(SKIPPED_PREFIX))
    return skipped / seen if seen else 0.0


def check_bad_fraction(counts: Mapping[str, int], limit: float, split: str = "train") -> None:
    fraction = bad_fraction(counts)
    if fraction > limit:
        reasons = ", ".join(
            f"{k.removeprefix(SKIPPED_PREFIX)}={v}"
            for k, v in sorted(counts.items())
            if k.startswith(SKIPPED_PREFIX)
        )
        raise DataQualityError(
            f"{fraction:.1%} of the {counts.get(SEEN, 0)} {split} samples read so far were "
            f"unusable ({reasons}), more than data.max_bad_fraction={limit:g}; inspect the "
            "shards or raise data.max_bad_fraction"
        )
