"""Recovering from CUDA out-of-memory errors (FastReID's ``fastreid.utils.memory``).

``retry_if_cuda_oom(func)`` calls ``func``; on a CUDA OOM it empties PyTorch's cache of
freed GPU blocks (fragmentation is a common cause) and calls it again; if that fails too it
calls it a third time with its CUDA inputs copied to the CPU, so a function that runs where
its inputs are (a distance block, a matrix product) finishes on the CPU instead of failing.
Only CUDA tensors (also inside lists, tuples and dicts) and CUDA ``torch.device`` arguments
move; the result may be on the CPU, the caller moves it back if it must.
``cpu_fallback=False`` stops after the second try (for code whose inputs cannot move, e.g. a
model that would be moved off the GPU for good).
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable, TypeVar

import torch

logger = logging.getLogger(__name__)

T = TypeVar("T")


def is_cuda_oom(error: BaseException) -> bool:
    """True for PyTorch's CUDA out-of-memory errors (old versions raise a RuntimeError)."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "CUDA out of memory" in str(error)


def to_cpu(value: Any) -> Any:
    """``value`` with its CUDA tensors (nested in lists, tuples, dicts) and CUDA devices moved
    to the CPU; everything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.cpu() if value.device.type == "cuda" else value
    if isinstance(value, torch.device):
        return torch.device("cpu") if value.type == "cuda" else value
    if isinstance(value, (list, tuple)):
        moved = [to_cpu(item) for item in value]
        return type(value)(moved) if not hasattr(value, "_fields") else type(value)(*moved)
    if isinstance(value, dict):
        return type(value)((key, to_cpu(item)) for key, item in value.items())
    return value


def retry_if_cuda_oom(func: Callable[..., T] | None = None, *,
                      cpu_fallback: bool = True) -> Callable[..., T]:
    """``func`` retried after a CUDA OOM: once after emptying the CUDA cache, then (with
    ``cpu_fallback``) with its inputs on the CPU. Usable as ``retry_if_cuda_oom(f)(args)``
    or as a decorator with or without arguments."""
    if func is None:
        return functools.partial(retry_if_cuda_oom, cpu_fallback=cpu_fallback)

    @functools.wraps(func)
    def wrapped(*args: Any, **kwargs: Any) -> T:
        try:
            return func(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 (only CUDA OOMs are caught, below)
            if not is_cuda_oom(error):
                raise
        logger.warning("CUDA out of memory in %s: emptying the CUDA cache and retrying",
                       _name(func))
        torch.cuda.empty_cache()
        if not cpu_fallback:
            return func(*args, **kwargs)
        try:
            return func(*args, **kwargs)
        except Exception as error:  # noqa: BLE001
            if not is_cuda_oom(error):
                raise
        logger.warning("CUDA out of memory again in %s: running it on the CPU", _name(func))
        return func(*to_cpu(list(args)), **to_cpu(kwargs))

    return wrapped


def _name(func: Callable) -> str:
    return getattr(func, "__qualname__", repr(func))
