"""What the current pass over the training shards must leave out, shared with every read task.

A resumed epoch continues where its checkpoint left off: shards it finished are not read again,
and keys it consumed from shards in progress are dropped as they are read. That happens in the
read tasks, before Ray splits the rows among the workers; dropping them in each worker instead
would leave ranks with unequal step counts and hang the next collective. Read tasks run in many
processes on many nodes, so the skip list lives in one small named actor, which the trainer's
rank 0 sets before every pass (empty for a fresh epoch).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping

import ray

from mmpretrain.data.run_actors import create_on_driver_node, lookup


@ray.remote(num_cpus=0)
class ResumeFilter:
    def __init__(self) -> None:
        self._finished: frozenset[str] = frozenset()
        self._consumed: dict[str, frozenset[str]] = {}
        self._epoch = 0

    def set(self, finished: list[str], consumed: dict[str, list[str]], epoch: int = 0) -> None:
        self._finished = frozenset(finished)
        self._consumed = {url: frozenset(keys) for url, keys in consumed.items()}
        self._epoch = epoch

    def for_shard(self, url: str) -> tuple[bool, frozenset[str], int]:
        return url in self._finished, self._consumed.get(url, frozenset()), self._epoch


def filter_name(run_name: str) -> str:
    """Unique per launch, so concurrent runs on one cluster never share a skip list."""
    return f"mmpretrain-resume-{run_name}-{uuid.uuid4().hex[:8]}"


def create_filter(name: str) -> ray.actor.ActorHandle:
    return create_on_driver_node(ResumeFilter, name)


def publish(
    name: str, finished: Iterable[str], consumed: Mapping[str, Iterable[str]], epoch: int = 0
) -> None:
    """Sets the skip list and the epoch of the next pass; returns once the actor holds them.

    The epoch reseeds the random crops (``transforms.crop_seed_for``): carried here, beside
    the skip list, because it is the same kind of fact (what this pass is), read by the same
    read tasks, and a resumed run publishes its checkpoint's epoch, so it draws the same crops.
    """
    ray.get(
        lookup(name).set.remote(
            sorted(finished), {url: sorted(keys) for url, keys in consumed.items()}, epoch
        )
    )


def skips_for(name: str, url: str) -> tuple[bool, frozenset[str], int]:
    """(is the shard finished, keys of it already consumed, the pass's epoch) for this pass."""
    return ray.get(lookup(name).for_shard.remote(url))
