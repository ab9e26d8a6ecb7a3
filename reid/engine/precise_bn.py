"""Precise BatchNorm: replace running statistics by their exact average over many batches.

During training BatchNorm keeps an exponential moving average of batch statistics, biased
towards the last batches and towards weights that have since changed. Recomputing the
statistics with the final weights (Wu & Johnson, "Rethinking BatchNorm") usually helps
retrieval features.
"""
from __future__ import annotations

import logging
from itertools import islice
from typing import Iterable

import torch
from torch import nn
from tqdm import tqdm

from reid.engine.trainer import cycle
from reid.utils import comm

logger = logging.getLogger(__name__)

BatchNorm = nn.modules.batchnorm._BatchNorm  # BatchNorm1d/2d/3d and SyncBatchNorm


def tracked_batchnorms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, BatchNorm) and m.track_running_stats]


@torch.no_grad()
def update_bn_stats(model: nn.Module, data_loader: Iterable, num_iters: int) -> None:
    """Set every BatchNorm's running mean and variance to the average of the batch means and
    (unbiased) batch variances over ``num_iters`` batches of ``data_loader``.

    Each batch is passed as ``model(batch)``. The model runs in eval mode except for its
    BatchNorm layers, so it takes the inference path (e.g. images -> features) while the
    BatchNorms measure batch statistics. The loader is restarted when it has fewer batches.
    Afterwards the weights, every module's train/eval mode, the BatchNorm momenta and their
    batch counters are as before.

    With several processes every rank passes its own ``num_iters`` batches and the statistics
    are then averaged over the ranks (one all-reduce), so every rank ends with the same running
    mean and variance: those one process would compute over all the ranks' batches.
    """
    bns = tracked_batchnorms(model)
    if not bns or num_iters <= 0:
        logger.info("precise-BN: nothing to do (%d BatchNorm layers, %d iterations)",
                    len(bns), num_iters)
        return
    modes = {module: module.training for module in model.modules()}
    saved = [(bn.momentum, bn.num_batches_tracked.clone()) for bn in bns]
    model.eval()
    for bn in bns:
        # momentum None makes BatchNorm keep a cumulative average: after n batches the
        # running statistics are exactly the mean of the n batch statistics.
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    try:
        batches = islice(cycle(data_loader), num_iters)
        for batch in tqdm(batches, total=num_iters, desc="precise-BN", unit="batch",
                          disable=not comm.is_main_process()):
            model(batch)
    finally:
        for bn, (momentum, count) in zip(bns, saved):
            bn.momentum = momentum
            bn.num_batches_tracked.copy_(count)
        for module, training in modes.items():
            module.train(training)
    average_over_ranks(bns)
    logger.info("precise-BN: recomputed %d BatchNorm layers over %d batches%s", len(bns),
                num_iters, f" on each of {comm.get_world_size()} processes"
                if comm.get_world_size() > 1 else "")


def average_over_ranks(bns: list[nn.Module]) -> None:
    """Every BatchNorm's running mean and variance averaged over the ranks (equal batch counts
    make it the average over all the ranks' batches)."""
    if comm.get_world_size() == 1:
        return
    stats = [s for bn in bns for s in (bn.running_mean, bn.running_var)]
    flat = torch.cat([s.reshape(-1).double() for s in stats])
    if torch.distributed.get_backend() != "nccl":
        flat = flat.cpu()
    comm.all_reduce_tensor(flat, "mean")
    offset = 0
    for s in stats:
        s.copy_(flat[offset:offset + s.numel()].view_as(s).to(s.device, s.dtype))
        offset += s.numel()
