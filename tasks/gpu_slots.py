"""One training per GPU at a time, across flow runs, workers and sweeps: Prefect global
concurrency limits, one per GPU of each machine (``reid-gpu-<host>-<index>``, the physical
index, read through CUDA_VISIBLE_DEVICES).

A training on GPUs takes one slot of the limit of every GPU it uses, waiting while another
training holds it. Each limit is created with ``REID_TRAININGS_PER_GPU`` slots (default 1)
the first time it is needed; a limit that already exists keeps what its owner set, so
``prefect gcl update reid-gpu-<host>-0 --limit 2`` allows two trainings on that GPU. A
training on the CPU takes no slot.
"""
from __future__ import annotations

import contextlib
import os
import socket
from typing import Iterator

import torch
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from reid.config import CfgNode

PER_GPU_ENV = "REID_TRAININGS_PER_GPU"


def training_gpus(cfg: CfgNode, nproc_per_node: int = 1) -> list[int]:
    """The physical indices of the GPUs a training of ``cfg`` uses on this machine."""
    if not str(cfg.MODEL.DEVICE).startswith("cuda") or not torch.cuda.is_available():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    physical = [int(i) for i in visible.split(",") if i.strip().isdigit()] if visible else \
        list(range(torch.cuda.device_count()))
    device = str(cfg.MODEL.DEVICE)
    first = int(device.split(":")[1]) if ":" in device else 0
    return physical[first:first + max(1, nproc_per_node)]


def limit_names(gpus: list[int], host: str | None = None) -> list[str]:
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in host or socket.gethostname())
    return [f"reid-gpu-{host}-{index}" for index in gpus]


def ensure_limits(names: list[str]) -> None:
    """Create the missing limits with REID_TRAININGS_PER_GPU slots (default 1)."""
    slots = int(os.environ.get(PER_GPU_ENV, "1"))
    with get_client(sync_client=True) as client:
        for name in names:
            try:
                client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                with contextlib.suppress(ObjectAlreadyExists):  # another run made it first
                    client.create_global_concurrency_limit(
                        GlobalConcurrencyLimitCreate(name=name, limit=slots))


@contextlib.contextmanager
def gpu_slots(cfg: CfgNode, nproc_per_node: int = 1) -> Iterator[list[str]]:
    """Hold one slot of each GPU the training uses (nothing for a CPU training)."""
    names = limit_names(training_gpus(cfg, nproc_per_node))
    if not names:
        yield names
        return
    ensure_limits(names)
    with concurrency(names, occupy=1, strict=True):
        yield names
