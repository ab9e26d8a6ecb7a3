"""The random state of a process, as a checkpoint can hold it (``torch.load(weights_only=True)``
accepts tensors, numbers, strings, lists, tuples and dicts only).

What a training step draws from: python's ``random``, numpy's global generator, torch's CPU
generator (dropout, drop-path, MoCo's initial queue) and every CUDA device's generator. Data
augmentations do not: they are seeded per sample (``reid.data.build.AugmentationSeeds``).
"""
from __future__ import annotations

import random

import numpy as np
import torch


def capture() -> dict:
    """This process's generators' states."""
    version, keys, gauss = random.getstate()
    kind, mt, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(keys, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(mt.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict) -> None:
    """Put back what ``capture`` returned (CUDA states only where this process has the same
    devices initialised)."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
