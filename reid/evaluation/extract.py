"""Turn a test loader into features: one ``N x D`` tensor plus pids and camera ids."""
from __future__ import annotations

import copy
import logging
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from torch import nn
from torch.fx.experimental import optimization as fx_optimization
from tqdm import tqdm

from reid.errors import ReidError
from reid.utils import comm

logger = logging.getLogger(__name__)


def extract_features(model: nn.Module, data_loader, device: torch.device | str,
                     flip: bool = False, bf16: bool = False
                     ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Features (float32, on CPU), pids and camids of every item of ``data_loader``, in order.

    Flip test: a feature is the mean of the features of the image and its horizontal mirror.
    ``bf16``: run the model under bfloat16 autocast (TEST.BF16) where the device has native
    bfloat16 (:func:`bf16_where_native`; float32 with a warning elsewhere).
    On the CPU the features come from an inference copy of the model (:func:`cpu_inference`):
    BatchNorms folded into their convolutions, channels-last; the same features to float
    rounding, faster (``benchmarks/inference_throughput.py``).
    With several processes, each extracts its shard (the InferenceSampler gives contiguous
    shards) and every rank receives all features concatenated in rank order.
    The model's train/eval mode and memory layout are restored afterwards.
    """
    device = torch.device(device)
    bf16 = bf16_where_native("TEST.BF16", bf16, device)
    was_training = model.training
    model.eval()
    layout = torch.channels_last if device.type == "cpu" else None
    feats, pids, camids = [], [], []
    try:
        with cpu_inference(model, device) as runner, torch.inference_mode(), \
                torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            batches = tqdm(data_loader, desc="extract features", unit="batch",
                           disable=not comm.is_main_process(), leave=False)
            for batch in batches:
                feats.append(_embed(runner, batch, device, flip, layout).float().cpu())
                pids.append(_as_numpy(batch["targets"]))
                camids.append(_as_numpy(batch["camids"]))
    finally:
        model.train(was_training)
    local = (_cat_feats(feats), _cat_ints(pids), _cat_ints(camids))
    gathered = _gather_in_rank_order(local)
    _check_every_item_once(data_loader, len(gathered[1]))
    return gathered


@contextmanager
def cpu_inference(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """The module that extracts on ``device``: the eval-mode ``model`` itself off the CPU; on
    the CPU a copy with its backbone's BatchNorms folded into the convolutions that feed them
    (when the backbone can be traced), or else ``model`` itself, channels-last while in use."""
    if device.type != "cpu":
        yield model
        return
    folded = _fold_batch_norms(model)
    runner = folded if folded is not None else model
    runner.to(memory_format=torch.channels_last)
    try:
        yield runner
    finally:  # the copy shares the heads with the model: restore them too
        model.to(memory_format=torch.contiguous_format)


def _fold_batch_norms(model: nn.Module) -> nn.Module | None:
    """A copy of the eval-mode ``model`` whose ``backbone`` has every BatchNorm that directly
    and only follows a convolution folded into it (torch.fx matches the traced graph, not
    module names, so only true conv -> BN pairs fold); None when there is no backbone or it
    cannot be traced (data-dependent control flow)."""
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        return None
    try:
        folded = fx_optimization.fuse(backbone)  # works on a deep copy
    except Exception as error:  # noqa: BLE001 (tracing fails in many ways; the model still works)
        logger.debug("BatchNorms not folded for inference (backbone not traceable): %s", error)
        return None
    clone = copy.copy(model)  # shares everything but the backbone, with its own tables:
    clone._modules = dict(model._modules)
    clone._parameters, clone._buffers = dict(model._parameters), dict(model._buffers)
    clone.backbone = folded
    return clone


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (else autocast would emulate it)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively: a CPU with AVX-512 BF16 or AMX, a CUDA
    GPU from Ampere on. Elsewhere autocast emulates it, slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and cpu_has_bf16()


_WARNED_NO_BF16: set[tuple[str, str]] = set()  # (key, device type): warned once per process


def bf16_where_native(key: str, requested: bool, device: torch.device) -> bool:
    """``requested`` (the config's ``key``: SOLVER.BF16_ENABLED, TEST.BF16), turned off with a
    warning on a device without native bfloat16. bf16 is only ever asked for speed, and
    emulated bf16 is slower than float32 and no more accurate: so a recipe that asks for it
    (the embedded default does) runs in float32 there, at float32's speed, instead of failing
    or crawling. Warned once per key and device type: a training's periodic evaluations
    would repeat it."""
    if requested and not native_bf16(device):
        if (key, device.type) in _WARNED_NO_BF16:
            return False
        _WARNED_NO_BF16.add((key, device.type))
        logger.warning("%s is ignored on this %s: it has no native bfloat16 (a CPU needs "
                       "AVX-512 BF16 or AMX, a GPU Ampere or newer), and emulated bfloat16 is "
                       "slower than float32; running in float32", key, device.type.upper())
        return False
    return requested


def _embed(model: nn.Module, batch: dict, device: torch.device, flip: bool,
           layout: torch.memory_format | None) -> torch.Tensor:
    images = batch["images"].to(device)
    if layout is not None and images.dim() == 4:
        images = images.contiguous(memory_format=layout)
    features = _forward(model, images, batch)
    if flip:
        # dim 3 is the width of B x C x H x W: a horizontal mirror; the cameras stay.
        features = (features + _forward(model, torch.flip(images, dims=[3]), batch)) / 2.0
    return features


def _forward(model: nn.Module, images: torch.Tensor, batch: dict) -> torch.Tensor:
    # Models with camera embeddings (ViT SIE) take a batch dict; the rest take images.
    if getattr(model, "takes_camids", False):
        return model({"images": images, "camids": batch["camids"]})
    return model(images)


def _gather_in_rank_order(local: tuple[torch.Tensor, np.ndarray, np.ndarray]
                          ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    if comm.get_world_size() == 1:
        return local
    shards = comm.all_gather(local)
    feats = torch.cat([s[0] for s in shards if s[0].numel()] or [local[0]])
    pids = np.concatenate([s[1] for s in shards])
    camids = np.concatenate([s[2] for s in shards])
    return feats, pids, camids


def _check_every_item_once(data_loader, count: int) -> None:
    """The shards must add up to the dataset: a sampler that pads shards (as
    DistributedSampler does) would duplicate queries or gallery items and skew the metrics."""
    dataset = getattr(data_loader, "dataset", None)
    try:
        expected = len(dataset)
    except TypeError:  # no dataset, or an iterable one without a length
        return
    if count != expected:
        raise ReidError(f"feature extraction gathered {count} items from {comm.get_world_size()} "
                        f"process(es) but the test set has {expected}: the test loader's sampler "
                        "must give each process a disjoint shard (use InferenceSampler)")


def _as_numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.cpu().numpy()
    return np.asarray(values, dtype=np.int64).ravel()


def _cat_feats(feats: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(feats) if feats else torch.empty(0, 0)


def _cat_ints(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.empty(0, dtype=np.int64)
