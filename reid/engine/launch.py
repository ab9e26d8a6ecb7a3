"""Device choice and distributed set-up for single-process and ``torchrun`` launches.

Under ``torchrun --nproc_per_node N`` every process reads WORLD_SIZE / RANK / LOCAL_RANK
(and MASTER_ADDR / MASTER_PORT) from its environment; a plain ``python`` launch has none of
them and runs as a single process.
"""
from __future__ import annotations

import logging
import os
import random
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from reid.errors import ReidError
from reid.utils import comm

logger = logging.getLogger(__name__)

TORCHRUN_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


def resolve_device(requested: str | torch.device) -> torch.device:
    """``requested`` as a torch.device; CUDA falls back to the CPU (with a warning) when absent.

    A bare "cuda" means this process's GPU (the one ``init_distributed`` selected).
    """
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError):
        raise ReidError(f"MODEL.DEVICE {requested!r} is not a device; expected cpu, cuda or "
                        "cuda:N") from None
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE is %s but CUDA is not available: running on the CPU", device)
        return torch.device("cpu")
    if device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise ReidError(f"environment variable {name}={value!r} must be an integer "
                        "(set by torchrun)") from None


def init_distributed(backend: str | None = None, timeout_s: float = 1800) -> bool:
    """Join the process group described by torchrun's environment; return whether distributed.

    ``backend`` defaults to NCCL when CUDA is available and gloo otherwise (pass "gloo" to
    train on CPUs of a GPU machine). With CUDA the process uses the GPU numbered LOCAL_RANK.
    Does nothing when WORLD_SIZE is absent or 1, or when the group already exists.
    """
    if comm.is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    missing = [name for name in TORCHRUN_ENV + ("MASTER_ADDR", "MASTER_PORT")
               if name not in os.environ]
    if missing:
        raise ReidError(f"distributed launch needs {', '.join(missing)} in the environment; "
                        "start with torchrun --nproc_per_node N")
    world_size, rank, local_rank = (_env_int(name) for name in TORCHRUN_ENV)
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    timeout = timedelta(seconds=timeout_s)
    store = attempt_store(world_size, timeout)
    if store is None:
        dist.init_process_group(backend, init_method="env://", world_size=world_size, rank=rank,
                                timeout=timeout)
    else:
        dist.init_process_group(backend, store=store, world_size=world_size, rank=rank,
                                timeout=timeout)
    logger.info("joined process group: rank %d of %d (%s)", rank, world_size, backend)
    return True


def attempt_store(world_size: int, timeout: timedelta):
    """Under torchrun's agent store (TORCHELASTIC_USE_AGENT_STORE), that store with a prefix
    per worker-group attempt (TORCHELASTIC_RESTART_COUNT), else None (env:// as usual): a
    restarted group must not read the addresses its dead predecessors published there (gloo
    then connects to a process that is gone and the restart fails)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], _env_int("MASTER_PORT"), world_size,
                          is_master=False, timeout=timeout)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"reid/attempt_{attempt}", store)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (the model itself otherwise)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def wrap_ddp(model: nn.Module, device: torch.device,
             find_unused_parameters: bool = False) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel when distributed, unchanged otherwise.

    Pass ``find_unused_parameters=True`` when some trainable parameters get no gradient in
    some iterations (e.g. layers frozen for SOLVER.FREEZE_ITERS by ``LayerFreezer``).
    """
    if comm.get_world_size() == 1:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids,
                                               find_unused_parameters=find_unused_parameters)


def destroy() -> None:
    """Leave the process group (no-op when not distributed)."""
    if comm.is_distributed():
        dist.destroy_process_group()


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed python, numpy and torch (CPU and CUDA) with ``seed + rank``; return that seed.

    Ranks get different streams (different augmentations); DDP makes the initial weights
    equal by broadcasting rank 0's at wrap time.
    """
    seed = int(seed) + int(rank)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return seed
