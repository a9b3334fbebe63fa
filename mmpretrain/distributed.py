"""The few collectives the project uses, each one also right in a single process.

Training, evaluation and checkpointing run on every rank of the process group Ray Train created;
unit tests, a one-worker ``mmpretrain eval`` and inference run without one. Each helper does the
collective when a group of more than one process exists and the obvious local thing otherwise,
so no caller writes the guard itself. Every helper here is a collective in a group: all ranks
must call it, in the same order.
"""

from __future__ import annotations

from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def is_distributed() -> bool:
    """True inside a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_from_rank0(value: T) -> T:
    """Rank 0's ``value`` on every rank (the others' values are ignored)."""
    if not is_distributed():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_objects(value: T) -> list[T]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not is_distributed():
        return [value]
    gathered: list[T] = [value] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def _all_reduce(tensor: torch.Tensor, op: dist.ReduceOp) -> None:
    """In place, on the device the group's backend reduces on: NCCL only reduces CUDA tensors,
    so a CPU tensor (a log row, a count) makes the round trip to the GPU and back."""
    if dist.get_backend() == dist.Backend.NCCL and tensor.device.type != "cuda":
        on_gpu = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_gpu, op=op)
        tensor.copy_(on_gpu)
    else:
        dist.all_reduce(tensor, op=op)


def mean_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Averages ``tensor`` over the ranks, in place, and returns it."""
    if is_distributed():
        _all_reduce(tensor, dist.ReduceOp.SUM)
        tensor.div_(dist.get_world_size())
    return tensor


def max_across_ranks(value: int) -> int:
    if not is_distributed():
        return value
    holder = torch.tensor([value])
    _all_reduce(holder, dist.ReduceOp.MAX)
    return int(holder.item())
