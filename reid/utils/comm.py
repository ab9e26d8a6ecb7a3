"""Distributed helpers. Work unchanged in a single process (world size 1)."""
from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def synchronize() -> None:
    if is_distributed() and get_world_size() > 1:
        dist.barrier()


def all_gather(data: object) -> list:
    """Gather any picklable object from every rank (list indexed by rank)."""
    if get_world_size() == 1:
        return [data]
    out: list = [None] * get_world_size()
    dist.all_gather_object(out, data)
    return out


def shared_random_seed() -> int:
    """A random seed that is the same on every rank (all ranks must call it)."""
    seed = int(torch.randint(2**31, (1,)).item())
    return int(all_gather(seed)[0])
