"""A searchable gallery: a faiss index over features, with a path, pid and camid per vector.

    gallery = Gallery.build(features, index_type="IVF1024,PQ64", metric="cosine",
                            paths=paths, pids=pids, camids=camids)
    result = gallery.search(query_features, k=10)   # or image paths, with a model attached
    result.ids, result.distances, result.paths, result.pids, result.camids   # Q x k each
    gallery.remove([3, 17]); gallery.add(more_features, paths=more_paths)
    gallery.save("gallery/"); Gallery.load("gallery/")

Distances are reid's own ("cosine" = ``1 - cos``, "euclidean" = squared L2, as
:mod:`reid.evaluation.distance`), recomputed exactly from the stored features for the
candidates faiss returns: ``rescore`` candidates per result are fetched and re-ranked
(default 10 for compressed codes such as PQ and SQ8, 1 for exact ones), ties broken by id
like the exact evaluation engine. With a ``Flat`` index the results are the exact ones.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from reid.errors import ReidError
from reid.evaluation.distance import nearest_candidates
from reid.retrieval import faiss_index, store
from reid.retrieval.model_card import ImageEmbedder, ModelCard
from reid.retrieval.rows import GalleryRows
from reid.retrieval.sources import (FeatureSource, as_matrix, queries_per_gather,
                                     read_features)

logger = logging.getLogger(__name__)

SEARCH_BLOCK = 16384  # queries per faiss search call
QUERY_BLOCK = 256  # queries re-scored at a time at most (see sources.queries_per_gather)


@dataclass
class SearchResult:
    """``Q x k`` arrays: ids, reid distances (ascending) and the metadata of each hit."""

    ids: np.ndarray
    distances: np.ndarray
    paths: np.ndarray
    pids: np.ndarray
    camids: np.ndarray


class Gallery:
    """A faiss index (``index_type``: a factory string) over vectors with metadata."""

    def __init__(self, dim: int, index_type: str = "Flat", metric: str = "cosine",
                 rescore: int | None = None, search_params: str | None = None,
                 model: ModelCard | None = None, device: str = "cpu") -> None:
        self.index_type, self.metric, self.device = index_type, metric, device
        self.rows = GalleryRows(int(dim))
        self._cpu_index = faiss_index.new_index(index_type, dim, metric)
        self.index = self._cpu_index
        self.rescore = int(rescore if rescore is not None
                           else faiss_index.default_rescore(index_type))
        if self.rescore < 1:
            raise ReidError(f"rescore must be >= 1 candidate per result, got {self.rescore}")
        self.search_params = search_params
        self.model = model
        self.embedder: ImageEmbedder | None = None
        self._coarse: faiss_index.CoarseSearch | None = None
        if self._cpu_index.is_trained:  # Flat, HNSW, SQfp16: no training step
            self._ready()

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, features, index_type: str = "Flat", metric: str = "cosine",
              paths: Sequence[str] | None = None, pids=None, camids=None, seed: int = 0,
              **options) -> "Gallery":
        """A trained and filled gallery from features (array, tensor, .npz or .npy path)."""
        source = read_features(features, paths, pids, camids)
        gallery = cls(source.dim, index_type, metric, **options)
        gallery.train(source, seed)
        gallery.add_source(source)
        return gallery

    @property
    def dim(self) -> int:
        return self.rows.dim

    def __len__(self) -> int:
        """Vectors that can be found (removed ones excluded)."""
        return self.rows.live

    def train(self, source: FeatureSource, seed: int = 0) -> None:
        """Train the index (IVF centroids, codebooks) on a random sample of ``source``."""
        if self._cpu_index.is_trained:
            return
        size = faiss_index.training_size(self._cpu_index, len(source))
        rows = np.sort(np.random.default_rng(seed).choice(len(source), size, replace=False))
        sample = faiss_index.prepare(source.vectors[rows], self.metric)
        faiss_index.train(self._cpu_index, sample, self.index_type)
        self._ready()

    def add(self, features, paths: Sequence[str] | None = None, pids=None, camids=None
            ) -> np.ndarray:
        """Add vectors (with their metadata); returns their ids."""
        return self.add_source(read_features(features, paths, pids, camids))

    def add_source(self, source: FeatureSource) -> np.ndarray:
        if source.dim != self.dim:
            raise ReidError(f"the gallery holds {self.dim}-d features; got {source.dim}-d")
        if not self._cpu_index.is_trained:
            self.train(source)
        norms = []
        for _, chunk in source.chunks():
            norms.append(np.linalg.norm(chunk, axis=1))  # kept for cosine re-scoring
            self.index.add(faiss_index.prepare(chunk, self.metric, norms[-1]))
        return self.rows.append(source, np.concatenate(norms) if norms else None)

    def remove(self, ids) -> int:
        """Remove vectors by id (they are never returned again); returns how many were live."""
        ids = np.unique(np.asarray(ids, dtype=np.int64).ravel())
        bad = ids[(ids < 0) | (ids >= len(self.rows))]
        if bad.size:
            raise ReidError(f"cannot remove id {int(bad[0])}: the gallery has ids 0.."
                            f"{len(self.rows) - 1}")
        fresh = int((~self.rows.removed[ids]).sum())
        self.rows.removed[ids] = True
        return fresh

    # ------------------------------------------------------------------ searching
    def use_model(self, embedder: ImageEmbedder) -> None:
        """Embed image queries with ``embedder``: refused unless it is the gallery's model."""
        if self.model is not None:
            self.model.check_matches(embedder.card, "this gallery index")
        self.embedder = embedder

    def search(self, queries, k: int = 10) -> SearchResult:
        """The ``k`` nearest live vectors of each query (features ``Q x D``, or image paths
        when a model is attached with :meth:`use_model`)."""
        feats = self._query_features(queries)
        if k < 1 or k > len(self):
            raise ReidError(f"k must be between 1 and the gallery size {len(self)}, got {k}")
        fetch = min(len(self), k * self.rescore)
        removed = np.flatnonzero(self.rows.removed)
        ids = np.empty((len(feats), k), dtype=np.int64)
        dist = np.empty((len(feats), k), dtype=np.float32)
        rows = min(QUERY_BLOCK, queries_per_gather(fetch, self.dim))
        # faiss gets many queries per call (one coarse search and one parallel scan for all
        # of them); the candidates' rows are then gathered a few hundred queries at a time
        buffer = np.empty(min(rows, len(feats)) * fetch * self.dim, dtype=np.float32)
        for first in range(0, len(feats), SEARCH_BLOCK):
            block = feats[first:first + SEARCH_BLOCK]
            found = faiss_index.search(self.index, faiss_index.prepare(block, self.metric),
                                       fetch, removed, self._coarse)
            for start in range(0, len(block), rows):
                part = slice(first + start, first + start + rows)
                ids[part], dist[part] = self._rescore(block[start:start + rows],
                                                      found[start:start + rows], k, buffer)
        safe = np.maximum(ids, 0)
        return SearchResult(ids=ids, distances=dist, paths=self.rows.paths[safe],
                            pids=self.rows.pids[safe], camids=self.rows.camids[safe])

    def _query_features(self, queries) -> np.ndarray:
        if isinstance(queries, (str, Path)):
            queries = [queries]
        if isinstance(queries, (list, tuple)) and queries and isinstance(queries[0], (str, Path)):
            if self.embedder is None:
                raise ReidError("searching with images needs the gallery's model: "
                                "Gallery.load(DIR, with_model=True) or gallery.use_model(...)")
            queries = self.embedder(queries)
        feats = as_matrix(queries, "query features")
        if feats.shape[1] != self.dim:
            raise ReidError(f"query features have dimension {feats.shape[1]}; the gallery's "
                            f"{self.dim}")
        return feats

    def _rescore(self, queries: np.ndarray, found: np.ndarray, k: int,
                 buffer: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best of the candidates by reid's exact distance, ties by id (their rows
        gathered into ``buffer`` when given)."""
        norms = self.rows.norms(found) if self.metric == "cosine" else None
        return nearest_candidates(queries, found, self.rows.take(found, buffer), k,
                                  self.metric, norms)

    # ------------------------------------------------------------------ device, persistence
    def _ready(self) -> None:
        """Apply the search parameters and move the index to its device."""
        if self.search_params is None:
            self.search_params = faiss_index.default_search_parameters(self._cpu_index)
        faiss_index.set_search_parameters(self._cpu_index, self.search_params)
        self.index = faiss_index.to_device(self._cpu_index, self.device)
        self._coarse = faiss_index.CoarseSearch.of(self.index)

    def cpu_index(self):
        """The index on the CPU (a GPU index is copied back), as saved."""
        return faiss_index.to_cpu(self.index)

    def save(self, directory: str | Path) -> Path:
        """Write the gallery to ``directory``, atomically (:mod:`reid.retrieval.store`)."""
        return store.save_gallery(self, Path(directory))

    @classmethod
    def load(cls, directory: str | Path, with_model: bool = False, device: str = "cpu",
             search_params: str | None = None) -> "Gallery":
        """The gallery saved in ``directory``; its vectors stay memory-mapped. ``with_model``:
        also load the model it was built with (image queries); ``search_params`` replaces the
        saved ones (e.g. ``nprobe=64``)."""
        saved = store.read_gallery(Path(directory))
        manifest = saved.manifest
        gallery = cls(manifest["dim"], manifest["index_type"], manifest["metric"],
                      rescore=manifest["rescore"], model=saved.model, device=device,
                      search_params=search_params if search_params is not None
                      else manifest["search_params"])
        gallery._cpu_index = saved.index
        gallery.rows.append(saved.rows, saved.norms)
        gallery.rows.removed[:] = saved.removed
        gallery._ready()
        if with_model:
            gallery.use_model(store.model_embedder(saved.model, Path(directory)))
        return gallery
