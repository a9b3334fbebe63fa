"""The small named actors a run keeps its shared books in (data quality, resume skip list).

They are pinned to the driver's node: a worker node may be lost mid-run and the run must go
on, but nothing outlives the driver anyway. Data tasks find them by name.
"""

from __future__ import annotations

import functools
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


def create_on_driver_node(actor_class: Any, name: str) -> ray.actor.ActorHandle:
    """Keep the returned handle for the run: the actor ends when its last handle goes."""
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return actor_class.options(name=name, get_if_exists=True, scheduling_strategy=here).remote()


@functools.lru_cache(maxsize=16)
def lookup(name: str) -> ray.actor.ActorHandle:
    return ray.get_actor(name)
