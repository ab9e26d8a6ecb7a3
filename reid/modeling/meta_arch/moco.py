"""MoCo: Baseline plus a memory queue of past features (FastReID's MoCo meta-architecture).

Every training step enqueues the batch's L2-normalised features (detached) with their labels,
overwriting the oldest entries (FIFO, wrapping around MODEL.QUEUE_SIZE), then adds ``loss_mb``:
a pairwise CosFace loss of the batch against the whole queue,

    softplus(logsumexp_p(-gamma s_p) + logsumexp_n(gamma (s_n + m))),  gamma 32, m 0.25,

per sample and averaged, where s are cosine similarities to queue entries of the same (p) or
another (n) identity and a sample's own, just enqueued entry is not one of its positives.
The queue lives in buffers under FastReID's names (``memory.queue`` D x K, ``memory.queue_label``
1 x K, ``memory.queue_ptr``), so checkpoints resume it and FastReID's MoCo checkpoints load.

Departures from FastReID, all in the queue's bookkeeping: FastReID masks
columns 0..B-1 as "self" wherever the pointer is (so from the second step on a sample counts
itself as a positive); here the batch's actual columns are masked. FastReID labels the random
initial entries 0 (positives of identity 0); here they are labelled -1, negatives of every
identity until real features overwrite them. Unlike FastReID, the queue size need not divide
by the batch size here: writes wrap around the end.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from reid.errors import ReidError
from reid.modeling.meta_arch.baseline import Baseline
from reid.modeling.meta_arch.build import META_ARCH_REGISTRY
from reid.utils import comm

# FastReID's fixed memory-loss hyper-parameters
MEMORY_GAMMA = 32.0
MEMORY_MARGIN = 0.25
# a finite "minus infinity": logsumexp over an all-masked row must keep finite gradients
MASKED = -1e9
# label of the random entries the queue starts with (no training identity)
NO_LABEL = -1


def concat_all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along dim 0 in rank order (no gradient)."""
    if comm.get_world_size() == 1:
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(comm.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


def memory_cosface_loss(queries: torch.Tensor, targets: torch.Tensor, queue: torch.Tensor,
                        queue_labels: torch.Tensor, self_columns: torch.Tensor,
                        gamma: float = MEMORY_GAMMA, margin: float = MEMORY_MARGIN) -> torch.Tensor:
    """Pairwise CosFace of normalised ``queries`` (B x D) against ``queue`` (D x K).

    ``self_columns[i]`` is the queue column holding query i itself, left out of its positives.
    """
    sims = queries @ queue
    is_pos = targets.view(-1, 1) == queue_labels.view(1, -1)
    is_neg = ~is_pos
    rows = torch.arange(len(queries), device=queries.device)
    is_pos[rows, self_columns] = False
    logit_p = (-gamma * sims).masked_fill(~is_pos, MASKED)
    logit_n = (gamma * (sims + margin)).masked_fill(~is_neg, MASKED)
    return F.softplus(torch.logsumexp(logit_p, dim=1) + torch.logsumexp(logit_n, dim=1)).mean()


class Memory(nn.Module):
    """A FIFO queue of ``size`` normalised ``dim``-d features and their labels."""

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        if size < 1:
            raise ReidError(f"MODEL.QUEUE_SIZE must be positive for MoCo; got {size}")
        self.size = size
        # random unit vectors, as MoCo: negatives until real features replace them
        self.register_buffer("queue", F.normalize(torch.randn(dim, size), dim=0))
        self.register_buffer("queue_label", torch.full((1, size), NO_LABEL, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Overwrite the oldest entries with ``keys`` (B x D); returns the columns written."""
        if len(keys) > self.size:
            raise ReidError(f"MODEL.QUEUE_SIZE {self.size} is smaller than the batch of "
                            f"{len(keys)} features it must hold; raise MODEL.QUEUE_SIZE")
        ptr = int(self.queue_ptr)
        columns = (ptr + torch.arange(len(keys), device=keys.device)) % self.size
        self.queue[:, columns] = keys.t().to(self.queue.dtype)
        self.queue_label[0, columns] = labels
        self.queue_ptr[0] = (ptr + len(keys)) % self.size
        return columns

    def forward(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Enqueue this step's features (all ranks') and return the loss against the queue."""
        queries = F.normalize(features, dim=1)
        keys = concat_all_gather(queries.detach())
        columns = self.enqueue(keys, concat_all_gather(targets))
        # this rank's samples sit after the lower ranks' in the gathered batch
        start = comm.get_rank() * len(queries)
        own_columns = columns[start:start + len(queries)]
        return memory_cosface_loss(queries, targets, self.queue.to(queries.dtype),
                                   self.queue_label, own_columns)


def memory_dim(cfg) -> int:
    """Dimension of the head's metric feature (``features``), which the queue holds."""
    heads = cfg.MODEL.HEADS
    if heads.EMBEDDING_DIM > 0 and heads.NECK_FEAT == "after":
        return heads.EMBEDDING_DIM
    return cfg.MODEL.BACKBONE.FEAT_DIM


@META_ARCH_REGISTRY.register()
class MoCo(Baseline):
    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.memory = Memory(memory_dim(cfg), cfg.MODEL.QUEUE_SIZE)

    def losses(self, outputs: dict, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        result = super().losses(outputs, targets)
        result["loss_mb"] = self.memory(outputs["features"], targets)
        return result
