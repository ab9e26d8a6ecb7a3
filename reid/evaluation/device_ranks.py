"""Exact ranks of each query's true matches with torch, for distance blocks already on a GPU.

The CPU path (:mod:`reid.evaluation.positive_ranks`) avoids sorting rows because a sort is
the expensive part there. On a GPU a segmented sort of a whole block is cheap, so this module
takes the direct route: junk items (same pid AND same camera) and NaN get the distance
``+inf``, each row is sorted stably (equal distances keep gallery-index order), and a positive's
1-based kept rank is its position in the sorted row plus one. The result is the same
:class:`RowBlock` as ``rank_block`` computes (same ranks, positives in the same order), so AP,
INP, the CMC protocols and the ROC accumulator consume it unchanged.
"""
from __future__ import annotations

import numpy as np
import torch

from reid.evaluation.positive_ranks import RowBlock, SamePidIndex, non_finite_match


class DeviceRanker:
    """Ranks the positives of query blocks whose distances live on ``device``."""

    def __init__(self, q_pids: np.ndarray, g_pids: np.ndarray, q_camids: np.ndarray,
                 g_camids: np.ndarray, index: SamePidIndex, device: torch.device) -> None:
        self.q_pids, self.q_camids, self.index = q_pids, q_camids, index
        self.device = torch.device(device)
        self._g_pids = torch.as_tensor(g_pids, device=self.device)
        self._g_camids = torch.as_tensor(g_camids, device=self.device)

    def rank(self, start: int, dist: torch.Tensor, host_dist: np.ndarray) -> RowBlock:
        """The block of queries ``start .. start + len(dist)``: ``dist`` on the device and
        ``host_dist`` the same numbers on the CPU (kept in the block for the protocols and
        the ROC accumulator)."""
        stop = start + dist.shape[0]
        q_pids, q_camids = self.q_pids[start:stop], self.q_camids[start:stop]
        with torch.no_grad():
            pids = torch.as_tensor(q_pids, device=self.device)[:, None]
            cams = torch.as_tensor(q_camids, device=self.device)[:, None]
            same_pid = self._g_pids[None, :] == pids
            same_cam = self._g_camids[None, :] == cams
            positive = same_pid & ~same_cam
            _check_finite(dist, positive, start)
            key = dist + 0.0  # -0.0 -> +0.0: CUDA's radix sort would order zeros by sign
            # Junk, and NaN (ranked like +inf, as on the CPU), after every finite distance.
            key.masked_fill_((same_pid & same_cam) | key.isnan(), float("inf"))
            order = key.argsort(dim=1, stable=True)
            row, position = positive.gather(1, order).nonzero(as_tuple=True)  # row-major
            num_pos = positive.sum(dim=1)
            shape = (len(q_pids), int(num_pos.max()) if num_pos.numel() else 0)
            first_of_row = num_pos.cumsum(0) - num_pos
            slot = torch.arange(row.numel(), device=self.device) - first_of_row[row]
            gallery_index = order[row, position]
            ranks = _table(row, slot, position + 1, shape, torch.int64)
            pos_index = _table(row, slot, gallery_index, shape, torch.int64)
            pos_dist = _table(row, slot, dist[row, gallery_index], shape, dist.dtype)
        return RowBlock(start=start, dist=host_dist, q_pids=q_pids, q_camids=q_camids,
                        members=self.index.members(slice(start, stop)),
                        num_pos=num_pos.cpu().numpy(), pos_dist=pos_dist.cpu().numpy(),
                        pos_index=pos_index.cpu().numpy(), ranks=ranks.cpu().numpy())


def _table(row: torch.Tensor, slot: torch.Tensor, values: torch.Tensor, shape: tuple[int, int],
           dtype: torch.dtype) -> torch.Tensor:
    """A zero-padded ``rows x width`` table with ``values`` at ``(row, slot)``."""
    out = torch.zeros(shape, dtype=dtype, device=values.device)
    out[row, slot] = values.to(dtype)
    return out


def _check_finite(dist: torch.Tensor, positive: torch.Tensor, start: int) -> None:
    bad = (positive & ~torch.isfinite(dist)).any(dim=1)
    if bool(bad.any()):
        raise non_finite_match(start + int(bad.nonzero()[0, 0]))
