"""Distributed helpers under FastReID's names (``fastreid.utils.comm``). Every one works
unchanged in a single process (world size 1); the collective ones must be called by every rank.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_local_rank() -> int:
    """This process's rank on its machine (torchrun's LOCAL_RANK; 0 when not launched by it)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if is_distributed() else 0


def get_local_size() -> int:
    """Processes on this machine (torchrun's LOCAL_WORLD_SIZE; 1 when not launched by it)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if is_distributed() else 1


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


def gather(data: object, dst: int = 0) -> list:
    """Any picklable object of every rank, as a list indexed by rank on rank ``dst`` (an empty
    list on the other ranks)."""
    if get_world_size() == 1:
        return [data]
    out: list | None = [None] * get_world_size() if get_rank() == dst else None
    dist.gather_object(data, out, dst=dst)
    return out if out is not None else []


def shared_random_seed() -> int:
    """A random seed that is the same on every rank (all ranks must call it)."""
    seed = int(torch.randint(2**31, (1,)).item())
    return int(all_gather(seed)[0])


def all_reduce_tensor(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``tensor`` reduced over the ranks in place ("sum", "mean" or "max"); returned."""
    if get_world_size() == 1:
        return tensor
    if op == "mean":
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.div_(get_world_size())
    dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return tensor


def reduce_dict(values: dict[str, float], average: bool = True) -> dict[str, float]:
    """The numbers of ``values`` (same keys on every rank) summed over the ranks, or averaged
    with ``average``; every rank gets the result (FastReID's reduce_dict gives it to rank 0
    only; all ranks holding it costs the same on one all-reduce)."""
    if get_world_size() == 1 or not values:
        return dict(values)
    names = sorted(values)
    # float64 on the CPU: gloo reduces CPU tensors; NCCL needs them on this process's GPU.
    device = torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor([float(values[n]) for n in names], dtype=torch.float64, device=device)
    all_reduce_tensor(tensor, "mean" if average else "sum")
    return dict(zip(names, tensor.tolist()))
