"""Query x gallery distances (smaller = more similar), computed with torch, whole or in blocks.

Numbers match FastReID: "cosine" is ``1 - cos`` of the features and "euclidean" is the
SQUARED Euclidean distance (a monotone map of the true distance, so ranks are the same and
the square root is not worth its cost).

Each metric splits into per-gallery terms computed once (inverse norms, squared norms) and a
per-block step (one matrix product plus element-wise scaling), so a large gallery is never
copied (e.g. normalised) and a block's numbers do not depend on how the queries are blocked:
the element-wise steps are the same for every block. A metric is also a plain callable
``metric(q, g) -> Q x G tensor``.

Every product goes through ``matmul_nt``, which picks the fastest float32 kernel on the CPU.
"""
from __future__ import annotations

import functools
from typing import Iterator

import numpy as np
import torch

from reid.errors import ReidError
from reid.utils.registry import Registry

DISTANCE_METRICS = Registry("distance metric")

# Same guard as torch.nn.functional.normalize: a zero vector has similarity 0 to everything.
_NORM_EPS = 1e-12


def matmul_nt(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None
              ) -> torch.Tensor:
    """``a @ b.T`` (plus ``bias[j]`` in every column ``j`` when given), as a new tensor.

    On the CPU the product runs on oneDNN's kernel where torch has it: torch's default CPU
    product is MKL's, which on AMD processors does not use its fastest code (on this 2-core
    AMD EPYC: 208 GFLOPS with oneDNN against 150 with MKL, the same float32 arithmetic).
    Elsewhere (CUDA, builds without oneDNN) it is ``torch.mm`` / ``torch.addmm``.
    """
    if _onednn_product_available() and a.device.type == "cpu" and \
            a.dtype == b.dtype == torch.float32 and not (a.requires_grad or b.requires_grad):
        return torch.ops.mkldnn._linear_pointwise(a.contiguous(), b.contiguous(), bias,
                                                  "none", [], "")
    return torch.mm(a, b.t()) if bias is None else torch.addmm(bias, a, b.t())


@functools.lru_cache(maxsize=1)
def _onednn_product_available() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    # A private operator (torch.compile's): checked once against torch.mm, on fixed values
    # (drawing random ones would move the caller's random stream).
    a = torch.arange(15.0).reshape(3, 5) / 7.0
    b = torch.arange(20.0).reshape(4, 5) / 11.0 - 1.0
    try:
        product = torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    except (AttributeError, RuntimeError):
        return False
    return bool(torch.allclose(product, a @ b.t(), atol=1e-5))


def all_finite(x: torch.Tensor) -> bool:
    """Whether ``x`` has no NaN or infinite value (one pass: min / max propagate NaN)."""
    if x.numel() == 0:
        return True
    low, high = x.aminmax()
    return bool(torch.isfinite(low) & torch.isfinite(high))


class CosineDistance:
    """``1 - q.g / (|q| |g|)``: dot products scaled by inverse norms."""

    def gallery_terms(self, g: torch.Tensor) -> torch.Tensor:
        return inverse_norms(g)

    def block(self, q: torch.Tensor, g: torch.Tensor, g_terms: torch.Tensor) -> torch.Tensor:
        out = matmul_nt(q * -inverse_norms(q)[:, None], g)  # -cos / |g|
        return out.mul_(g_terms[None, :]).add_(1.0)

    def __call__(self, q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return self.block(q, g, self.gallery_terms(g))


class SquaredEuclideanDistance:
    """``|q|^2 + |g|^2 - 2 q.g``: one matrix product, no ``Q x G x D`` difference tensor."""

    def gallery_terms(self, g: torch.Tensor) -> torch.Tensor:
        return g.pow(2).sum(dim=1)

    def block(self, q: torch.Tensor, g: torch.Tensor, g_terms: torch.Tensor) -> torch.Tensor:
        out = matmul_nt(q * -2.0, g, bias=g_terms)
        out.add_(q.pow(2).sum(dim=1)[:, None])
        # Rounding can make a zero distance slightly negative.
        return out.clamp_(min=0.0)

    def __call__(self, q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return self.block(q, g, self.gallery_terms(g))


DISTANCE_METRICS.register(CosineDistance(), name="cosine")
DISTANCE_METRICS.register(SquaredEuclideanDistance(), name="euclidean")


def inverse_norms(x: torch.Tensor) -> torch.Tensor:
    """``1 / |row|`` of every row, guarded: a zero row gets a finite scale and stays zero."""
    return x.norm(p=2, dim=1).clamp_(min=_NORM_EPS).reciprocal_()


class GalleryDistances:
    """Distances from blocks of queries to one gallery, computed on ``device``.

    The gallery features stay where they are on the CPU (a float32 tensor or array is used
    without a copy); on a GPU they are copied there once. Blocks come back as numpy float32
    arrays (from a GPU: in a reused host buffer, valid until the next block is requested, and
    with the block's GPU tensor).
    """

    def __init__(self, g_feats, metric: str = "cosine", device: str | torch.device = "cpu") -> None:
        self.metric = DISTANCE_METRICS.get(metric)
        self.device = torch.device(device)
        # Contiguous once here, not in every block's product.
        self.gallery = _as_features(g_feats, "gallery").to(self.device).contiguous()
        with torch.no_grad():
            self.g_terms = self.metric.gallery_terms(self.gallery)
        self._host: torch.Tensor | None = None

    @property
    def num_gallery(self) -> int:
        return self.gallery.shape[0]

    def blocks(self, q_feats, block_size: int
               ) -> Iterator[tuple[int, int, np.ndarray, torch.Tensor | None]]:
        """``(start, stop, distances, on_device)`` for consecutive blocks of queries: the
        distances of queries ``start..stop`` as numpy, and the same block's tensor when it was
        computed on a GPU (``None`` on the CPU)."""
        queries = _as_features(q_feats, "query")
        if queries.shape[1] != self.gallery.shape[1]:
            raise ReidError(f"query features have dimension {queries.shape[1]} but the gallery "
                            f"features {self.gallery.shape[1]}")
        for start in range(0, queries.shape[0], block_size):
            stop = min(start + block_size, queries.shape[0])
            with torch.no_grad():
                out = self.metric.block(queries[start:stop].to(self.device), self.gallery,
                                        self.g_terms)
            yield start, stop, self._on_host(out), out if out.device.type != "cpu" else None
            del out  # freed before the next block is computed

    def _on_host(self, out: torch.Tensor) -> np.ndarray:
        """The block as numpy: the tensor's own memory on the CPU, a reused pinned buffer
        from a GPU."""
        if out.device.type == "cpu":
            return out.numpy()
        rows = out.shape[0]
        if self._host is None or self._host.shape[0] < rows:
            self._host = torch.empty((rows, self.num_gallery), dtype=torch.float32,
                                     pin_memory=True)
        host = self._host[:rows]
        host.copy_(out)
        return host.numpy()


def compute_distance(q_feats, g_feats, metric: str = "cosine") -> np.ndarray:
    """The ``Q x G`` float32 distance matrix between query and gallery features."""
    queries, gallery = _as_features(q_feats, "query"), _as_features(g_feats, "gallery")
    if queries.shape[1] != gallery.shape[1]:
        raise ReidError(f"compute_distance expects N x D query and gallery features of the "
                        f"same D, got {tuple(queries.shape)} and {tuple(gallery.shape)}")
    distance = DISTANCE_METRICS.get(metric)
    gallery = gallery.to(queries.device)
    with torch.no_grad():
        dist = distance.block(queries, gallery, distance.gallery_terms(gallery))
    return dist.cpu().numpy()


def _as_features(feats, what: str) -> torch.Tensor:
    """A 2-D float32 tensor; a float32 numpy array or CPU tensor is used without a copy."""
    tensor = torch.as_tensor(feats)
    if tensor.ndim != 2:
        raise ReidError(f"{what} features must be an N x D matrix, got shape {tuple(tensor.shape)}")
    return tensor.float()


def candidate_distances(queries: np.ndarray, candidates: np.ndarray, metric: str,
                        norms: np.ndarray | None = None) -> np.ndarray:
    """``Q x C`` distances (``metric``: "cosine" or "euclidean", as above) of each query to
    its own ``C`` candidate rows (``candidates``: ``Q x C x D``): an index's candidates
    re-scored exactly (reid.retrieval). ``norms``: for cosine, the rows' L2 norms
    (``Q x C``) when already known, instead of a second pass over the rows."""
    q, g = torch.from_numpy(queries), torch.from_numpy(candidates)
    with torch.no_grad():
        if metric == "cosine":
            q = q / q.norm(dim=1, keepdim=True).clamp(min=_NORM_EPS)
            g_norms = g.norm(dim=2) if norms is None else torch.from_numpy(norms)
            return (1.0 - torch.bmm(g, q[:, :, None])[:, :, 0] /
                    g_norms.clamp(min=_NORM_EPS)).numpy()
        products = torch.bmm(g, q[:, :, None])[:, :, 0]
        squared = q.pow(2).sum(1)[:, None] + g.pow(2).sum(2) - 2.0 * products
        return squared.clamp_(min=0.0).numpy()


def nearest_candidates(queries: np.ndarray, found: np.ndarray, vectors: np.ndarray, k: int,
                       metric: str, norms: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, distances)``, ``Q x k``: the ``k`` nearest of each query's candidate ids
    ``found`` (``Q x C``, -1 = no candidate) by the exact distance, from their rows
    ``vectors`` (``Q x C x D``). Equal distances: the lower id first, as exact search; -1
    last (distance inf). ``norms``: the rows' L2 norms if known (candidate_distances)."""
    dist = candidate_distances(queries, vectors, metric, norms)
    dist[found < 0] = np.inf
    order = np.argsort(dist, axis=1, kind="stable")
    # rows with equal distances (rare but for -1's inf and duplicate rows) are ordered again
    # by (distance, id): one sort for the others instead of two for every row
    tied = np.flatnonzero((np.diff(np.take_along_axis(dist, order, 1), axis=1) == 0).any(1))
    if len(tied):
        ids = np.where(found[tied] < 0, np.iinfo(np.int64).max, found[tied])
        order[tied] = np.lexsort((ids, dist[tied]), axis=1)
    order = order[:, :k]
    return np.take_along_axis(found, order, 1), np.take_along_axis(dist, order, 1)
