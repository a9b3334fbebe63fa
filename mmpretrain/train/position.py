"""Where in the current epoch a run is: the data position saved with every checkpoint.

Per epoch: the shards finished, and the keys consumed from shards still in progress, merged from
every rank. It is global (no rank's split in it), so a run resumed on a different number of
workers carries it over unchanged: the resumed epoch reads what is left (see
``data/resume_filter.py``) and every sample of it is trained on once. Samples that were
prefetched or in a shuffle buffer at the checkpoint were not consumed, so they are read again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mmpretrain import distributed
from mmpretrain.data.shards import shard_keys


@dataclass
class DataPosition:
    epoch: int = 0
    finished: set[str] = field(default_factory=set)  # shards whose every sample was consumed
    consumed: dict[str, set[str]] = field(default_factory=dict)  # shard -> keys consumed

    @property
    def started(self) -> bool:
        """True when this epoch already trained on something (a resumed epoch)."""
        return bool(self.finished or self.consumed)

    def record(self, urls: Iterable[str], keys: Iterable[str]) -> None:
        for url, key in zip(urls, keys, strict=True):
            self.consumed.setdefault(url, set()).add(key)

    def merge(self, other: DataPosition) -> None:
        if other.epoch != self.epoch:
            raise ValueError(f"cannot merge positions of epochs {self.epoch} and {other.epoch}")
        self.finished |= other.finished
        for url, keys in other.consumed.items():
            self.consumed.setdefault(url, set()).update(keys)

    def compact(self) -> None:
        """Shards whose every key is consumed become one entry in ``finished``.

        Only where the shard's keys can be listed cheaply (local shards); elsewhere the keys
        stay listed, which is as exact, only larger.
        """
        for url in list(self.consumed):
            if url in self.finished:
                del self.consumed[url]
                continue
            keys = shard_keys(url)
            if keys is not None and keys <= self.consumed[url]:
                self.finished.add(url)
                del self.consumed[url]

    def summary(self) -> dict[str, int]:
        """What the checkpoint manifest says of the position."""
        return {
            "epoch": self.epoch,
            "shards_finished": len(self.finished),
            "shards_in_progress": len(self.consumed),
            "keys_consumed_in_progress": sum(len(keys) for keys in self.consumed.values()),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "finished": sorted(self.finished),
            "consumed": {url: sorted(keys) for url, keys in sorted(self.consumed.items())},
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> DataPosition:
        return cls(
            epoch=int(state["epoch"]),
            finished=set(state["finished"]),
            consumed={url: set(keys) for url, keys in state["consumed"].items()},
        )


def gather_position(position: DataPosition) -> DataPosition:
    """Every rank's consumption merged and compacted (collective: all ranks get the same)."""
    merged = DataPosition(epoch=position.epoch)
    for part in distributed.gather_objects(position.to_dict()):
        merged.merge(DataPosition.from_dict(part))
    merged.compact()
    return merged
