"""faiss indexes for reid's two distances, chosen by a faiss factory string.

reid's "cosine" is ``1 - cos`` and its "euclidean" the SQUARED L2 distance
(:mod:`reid.evaluation.distance`). faiss ranks the same way with inner products of unit
vectors (cosine: rows are normalised before they reach faiss, a zero row stays zero, as
reid's guarded norm makes it) and with its own L2 metric, which is already squared. The
distances a gallery returns are recomputed exactly from the stored features
(:mod:`reid.retrieval.gallery`), so faiss only has to find the candidates.

Index types are faiss factory strings: ``Flat`` (exact), ``IVF1024,Flat``, ``IVF1024,PQ64``,
``HNSW32``, ``SQfp16``, ``SQ8``, ... (https://github.com/facebookresearch/faiss/wiki/
The-index-factory). A GPU build of faiss is used when present and asked for; several GPUs
hold shards of the index (``faiss.index_cpu_to_all_gpus`` with ``shard=True``).
"""
from __future__ import annotations

import logging
import os
import re

# faiss's OpenMP threads busy-wait between parallel regions by default; when the cores are
# shared (torch's own thread pool, other processes) that spinning starves the threads doing
# the work: training a small IVF-PQ took 27 s instead of 0.8 s on 2 loaded cores. Read once,
# when faiss's OpenMP runtime starts; a value set by the user is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import faiss  # noqa: E402 (after the variable above)
import numpy as np
import torch

from reid.errors import ReidError
from reid.evaluation.extract import native_bf16
from reid.retrieval.bf16_scan import padded_rows

logger = logging.getLogger(__name__)

METRICS = {"cosine": faiss.METRIC_INNER_PRODUCT, "euclidean": faiss.METRIC_L2}
_NORM_EPS = 1e-12  # reid.evaluation.distance's guard: a zero vector stays zero

# Training sample: faiss wants >= 39 points per centroid and uses at most 256; 64 is its
# recommended middle ground. PQ codebooks (256 centroids each) need a few thousand rows.
TRAIN_PER_CENTROID = 64
MIN_TRAIN_ROWS = 16384
MAX_TRAIN_ROWS = 262144

# Exact re-scoring: candidates fetched per result, by the kind of codes the index stores.
# Compressed codes (PQ, 8-bit and smaller scalars) rank coarsely: fetch more and re-rank
# them exactly. Flat, fp16 and HNSW's own distances are already (nearly) exact.
RESCORE_BY_CODE = ((re.compile(r"PQ|SQ[468]\b|SQ[468],|LSH|RQ|LSQ"), 10),)
DEFAULT_RESCORE = 1


def check_metric(metric: str) -> int:
    if metric not in METRICS:
        raise ReidError(f"unknown metric {metric!r}: expected one of {', '.join(METRICS)}")
    return METRICS[metric]


def default_rescore(index_type: str) -> int:
    for pattern, factor in RESCORE_BY_CODE:
        if pattern.search(index_type):
            return factor
    return DEFAULT_RESCORE


def new_index(index_type: str, dim: int, metric: str) -> faiss.Index:
    """An empty CPU index of ``index_type`` (a faiss factory string) for ``metric``."""
    code = check_metric(metric)
    try:
        index = faiss.index_factory(int(dim), index_type, code)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "refused"
        raise ReidError(f"index type {index_type!r} is not a faiss factory string for {dim}-d "
                        f"vectors (e.g. Flat, IVF1024,Flat, IVF1024,PQ64, HNSW32, SQfp16, SQ8; "
                        f"faiss says: {reason})") from None
    _skip_polysemous_training(index)
    return index


def _skip_polysemous_training(index: faiss.Index) -> None:
    """The factory turns on polysemous training for PQ codes: a code reordering that only
    serves a Hamming pre-filter (``polysemous_ht``) that reid's search never enables, and
    that made training a small IVF-PQ 50x slower (25 s instead of 0.5 s on 2 cores)."""
    for part in (faiss.downcast_index(index), faiss.try_extract_index_ivf(index)):
        if part is not None and hasattr(part, "do_polysemous_training"):
            part.do_polysemous_training = False


def prepare(vectors: np.ndarray, metric: str, norms: np.ndarray | None = None
            ) -> np.ndarray:
    """What faiss receives: contiguous float32 rows, unit length for cosine (a copy);
    ``norms``: the rows' L2 norms when the caller has them."""
    rows = np.ascontiguousarray(vectors, dtype=np.float32)
    if metric == "cosine":
        if norms is None:
            norms = np.linalg.norm(rows, axis=1)
        rows = rows / np.maximum(norms, _NORM_EPS)[:, None]
    return rows


def training_size(index: faiss.Index, count: int) -> int:
    """How many rows to train ``index`` on (all of them for a small gallery)."""
    ivf = faiss.try_extract_index_ivf(index)
    centroids = ivf.nlist if ivf is not None else 0
    wanted = max(MIN_TRAIN_ROWS, TRAIN_PER_CENTROID * centroids)
    return min(count, wanted, MAX_TRAIN_ROWS)


def train(index: faiss.Index, sample: np.ndarray, index_type: str) -> None:
    """Train ``index`` (IVF centroids, PQ / SQ codebooks) on already prepared rows."""
    if index.is_trained:
        return
    logger.info("training %s on %d vectors", index_type, len(sample))
    try:
        index.train(sample)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1]
        raise ReidError(f"cannot train index {index_type!r} on {len(sample)} vectors (too few "
                        f"for its centroids? use fewer lists, e.g. IVF{max(1, len(sample) // 64)}"
                        f",Flat, or Flat; faiss says: {reason})") from None


def set_search_parameters(index: faiss.Index, params: str) -> None:
    """``"nprobe=32"``, ``"efSearch=128"``, ... (faiss ParameterSpace syntax, comma-separated)."""
    if not params:
        return
    try:
        faiss.ParameterSpace().set_index_parameters(index, params)
    except RuntimeError as exc:
        raise ReidError(f"search parameters {params!r} do not apply to this index (e.g. "
                        f"nprobe=32 for IVF, efSearch=128 for HNSW; faiss says: "
                        f"{str(exc).strip().splitlines()[-1]})") from None
    if "quantizer_efSearch" not in params:
        _widen_hnsw_quantizer(index)


def _widen_hnsw_quantizer(index: faiss.Index) -> None:
    """An HNSW coarse quantizer (``IVF..._HNSW..``) searches with its own ``efSearch``
    (faiss's default 16) whatever ``nprobe`` asks: at nprobe 256 it found fewer of the right
    lists, recall@10 0.86 instead of 0.95 (benchmarks/RESULTS.md). Its search list is made at
    least ``nprobe`` long, unless the user set ``quantizer_efSearch``."""
    ivf = faiss.try_extract_index_ivf(index)
    quantizer = faiss.downcast_index(ivf.quantizer) if ivf is not None else None
    if isinstance(quantizer, faiss.IndexHNSW):
        quantizer.hnsw.efSearch = max(quantizer.hnsw.efSearch, ivf.nprobe)


def default_search_parameters(index: faiss.Index) -> str:
    """A recall-minded default: 1/16 of an IVF's lists (at least 8), HNSW's efSearch 128."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return f"nprobe={min(ivf.nlist, max(8, ivf.nlist // 16))}"
    if isinstance(faiss.downcast_index(index), faiss.IndexHNSW):
        return "efSearch=128"
    return ""


def search(index: faiss.Index, queries: np.ndarray, k: int, removed: np.ndarray,
           coarse: "CoarseSearch | None" = None) -> np.ndarray:
    """``Q x k`` ids of the nearest rows (-1 where fewer were found), never a removed one;
    ``coarse``: the IVF's lists to probe are chosen by it (CPU indexes)."""
    if len(removed) and on_gpu(index):  # no id selector on GPU: fetch more, drop the removed
        ids = index.search(queries, min(index.ntotal, k + len(removed)))[1]
        return _drop(ids, removed, k)
    params = None
    if len(removed):
        selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(removed.astype(np.int64)))
        params = _parameters(index, selector)
    if coarse is None:
        return index.search(queries, k, params=params)[1]
    ivf = faiss.downcast_index(index)
    scores, lists = coarse.probe(queries, ivf.nprobe)
    params = params or faiss.SearchParametersIVF()
    params.nprobe = lists.shape[1]  # the lists given per query (nprobe, at most nlist)
    distances = np.empty((len(queries), k), dtype=np.float32)
    ids = np.empty((len(queries), k), dtype=np.int64)
    # the C++ call: faiss's Python wrapper of search_preassigned refuses search parameters
    # (the removed ids' selector)
    ivf.search_preassigned_c(len(queries), faiss.swig_ptr(queries), k, faiss.swig_ptr(lists),
                             faiss.swig_ptr(scores), faiss.swig_ptr(distances),
                             faiss.swig_ptr(ids), False, params)
    return ids


COARSE_QUERIES = 4096  # queries scored against every centroid at once (x nlist scores)


class CoarseSearch:
    """An IVF's coarse search (the ``nprobe`` lists each query scans) in torch instead of
    faiss's flat quantizer, which keeps each query's best lists in a heap: at 10,000 lists
    and nprobe 1,000 it took 1.25 s for 10,000 queries on 2 cores, torch 0.47 s (products
    in bfloat16 ~0.04 s, ``topk`` the rest; 0.65 s before the padded centroids and the
    output reused within a call, 0.42 s with it kept between calls, which threads searching
    one gallery would share; benchmarks/RESULTS.md). Inner products (cosine's
    unit rows) run in bfloat16 where the CPU has it natively: two lists whose scores agree
    to bfloat16's rounding at the ``nprobe``-th place may trade places, which changes which
    near-equal list is scanned, not the exactness of what is returned (re-scored rows).
    Squared L2 (its centroid norms dwarf the gaps) stays in float32."""

    def __init__(self, centroids: np.ndarray, metric_type: int) -> None:
        self.inner_product = metric_type == faiss.METRIC_INNER_PRODUCT
        cpu = torch.device("cpu")
        self.dtype = torch.bfloat16 if self.inner_product and native_bf16(cpu) \
            else torch.float32
        self.nlist = len(centroids)
        # zero rows up to a multiple of 1,024: oneDNN's bfloat16 product is ~2.5x faster
        # (4,096 queries x 10,000 lists: 37 ms, x 10,240 into a reused buffer: 15 ms);
        # their scores are sliced off before topk
        self.centroids = torch.zeros((padded_rows(self.nlist), centroids.shape[1]),
                                     dtype=self.dtype)
        self.centroids[:self.nlist] = torch.from_numpy(centroids)
        self.squared_norms = torch.from_numpy(centroids).pow(2).sum(1)

    @classmethod
    def of(cls, index: faiss.Index) -> "CoarseSearch | None":
        """For a CPU IVF index whose quantizer is flat (exact); None for any other."""
        ivf = faiss.downcast_index(index)
        if on_gpu(index) or not isinstance(ivf, faiss.IndexIVF):
            return None
        quantizer = faiss.downcast_index(ivf.quantizer)
        if not isinstance(quantizer, faiss.IndexFlat) or quantizer.ntotal != ivf.nlist:
            return None
        return cls(quantizer.reconstruct_n(0, quantizer.ntotal), ivf.metric_type)

    def probe(self, queries: np.ndarray, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, lists)``, ``Q x nprobe``, as faiss's quantizer reports them (inner
        products, or squared L2 distances)."""
        nprobe = min(int(nprobe), self.nlist)
        scores = np.empty((len(queries), nprobe), dtype=np.float32)
        lists = np.empty((len(queries), nprobe), dtype=np.int64)
        # one output for every block of this call (fresh per block, it costs page faults;
        # not kept between calls: searches may run in threads)
        buffer = torch.empty(min(len(queries), COARSE_QUERIES) * len(self.centroids),
                             dtype=self.dtype)
        with torch.no_grad():
            for start in range(0, len(queries), COARSE_QUERIES):
                q = torch.from_numpy(queries[start:start + COARSE_QUERIES])
                out = buffer[:len(q) * len(self.centroids)].view(len(q), -1)
                products = torch.mm(q.to(self.dtype), self.centroids.T,
                                    out=out)[:, :self.nlist]
                if not self.inner_product:
                    products = q.pow(2).sum(1, keepdim=True) + self.squared_norms \
                        - 2 * products
                # unsorted: faiss scans every list it is given, in any order
                best = products.topk(nprobe, dim=1, largest=self.inner_product, sorted=False)
                scores[start:start + len(q)] = best.values.float().numpy()
                lists[start:start + len(q)] = best.indices.numpy()
        return scores, lists


def _parameters(index: faiss.Index, selector) -> faiss.SearchParameters:
    """Search parameters of the index's own type (an IVF refuses the base type), carrying its
    current nprobe / efSearch and the selector."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nprobe)
    hnsw = faiss.downcast_index(index)
    if isinstance(hnsw, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(sel=selector, efSearch=hnsw.hnsw.efSearch)
    return faiss.SearchParameters(sel=selector)


def _drop(ids: np.ndarray, removed: np.ndarray, k: int) -> np.ndarray:
    keep = (ids >= 0) & ~np.isin(ids, removed)
    out = np.full((len(ids), k), -1, dtype=np.int64)
    for row, (found, mask) in enumerate(zip(ids, keep)):
        kept = found[mask][:k]
        out[row, :len(kept)] = kept
    return out


# --------------------------------------------------------------------------- GPU
def gpu_count() -> int:
    """GPUs faiss can use: 0 with the CPU build (faiss-cpu), whatever the machine has."""
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    return int(faiss.get_num_gpus())


def on_gpu(index: faiss.Index) -> bool:
    return "Gpu" in type(index).__name__ or isinstance(index, getattr(faiss, "IndexShards", ()))


def to_device(index: faiss.Index, device: str) -> faiss.Index:
    """``index`` on the GPUs when ``device`` asks for them ("cuda", or "auto" with a GPU
    build and a GPU); several GPUs each hold a shard. The CPU index otherwise."""
    gpus = gpu_count()
    if device == "cpu" or (device == "auto" and gpus == 0):
        return index
    if gpus == 0:
        raise ReidError(f"device {device!r} asks for a GPU but faiss has none (the CPU build "
                        "faiss-cpu, or no visible GPU): use device cpu, or install the GPU "
                        "build (README, `gpu` extra)")
    if gpus == 1:
        return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    options = faiss.GpuMultipleClonerOptions()
    options.shard = True
    return faiss.index_cpu_to_all_gpus(index, co=options)


def to_cpu(index: faiss.Index) -> faiss.Index:
    return faiss.index_gpu_to_cpu(index) if on_gpu(index) else index
