"""Rank lists of the queries a user names (FastReID's ``fastreid.utils.visualizer``;
``reid visualize``).

The evaluate stage draws the best and worst queries by AP (``OUTPUT_DIR/visual/``); this
draws any query: ``reid visualize --query 12 --query 0005_c2s1_000301_01.jpg`` extracts the
test set's features with the trained weights, ranks its gallery for each named query (as
the Market protocol does: the query's own identity seen by its own camera is left out) and
writes one figure, a row per query, with the nearest ``max_rank`` gallery images framed green
(same identity) or red (another one), and the first true match when it ranks lower.
:class:`Visualizer` does the ranking and drawing from any distance matrix.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from reid.data.datasets.bases import Record
from reid.errors import ReidError

DEFAULT_MAX_RANK = 10


def average_precision(matches: np.ndarray) -> float:
    """AP of one ranked list of booleans (1 = same identity); 0 without any match."""
    hits = np.flatnonzero(matches)
    if hits.size == 0:
        return 0.0
    return float(np.mean(np.arange(1, hits.size + 1) / (hits + 1)))


class Visualizer:
    """Rank lists of chosen queries against one gallery."""

    def __init__(self, query: Sequence[Record], gallery: Sequence[Record]) -> None:
        self.query = list(query)
        self.gallery = list(gallery)
        self.dist: np.ndarray | None = None
        self.query_indices: list[int] = []

    def get_model_output(self, dist: np.ndarray, query_indices: Sequence[int]) -> None:
        """``dist``: distances of the queries ``query_indices`` (rows) to the gallery."""
        dist = np.asarray(dist)
        if dist.shape != (len(query_indices), len(self.gallery)):
            raise ReidError(f"distances of shape {dist.shape} do not match {len(query_indices)} "
                            f"queries and a gallery of {len(self.gallery)}")
        self.dist, self.query_indices = dist, list(query_indices)

    def get_matched_result(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(gallery indices nearest first, same identity or not) for row ``row``, without the
        gallery items of the query's identity seen by the query's camera."""
        if self.dist is None:
            raise ReidError("call get_model_output(dist, query_indices) first")
        _, pid, camid = self.query[self.query_indices[row]]
        g_pids = np.array([r[1] for r in self.gallery])
        g_camids = np.array([r[2] for r in self.gallery])
        order = np.argsort(self.dist[row], kind="stable")
        kept = order[~((g_pids[order] == pid) & (g_camids[order] == camid))]
        return kept, g_pids[kept] == pid

    def rank_list(self, row: int, max_rank: int = DEFAULT_MAX_RANK) -> dict:
        """Row ``row`` as ``reid.visualize.plot_rank_list`` draws it."""
        order, matches = self.get_matched_result(row)
        path, pid, camid = self.query[self.query_indices[row]]

        def item(rank: int) -> dict:
            g_path, g_pid, g_camid = self.gallery[order[rank]]
            return {"path": g_path, "pid": int(g_pid), "camid": int(g_camid),
                    "distance": float(self.dist[row, order[rank]]),
                    "match": bool(matches[rank]), "rank": rank + 1}

        hits = np.flatnonzero(matches)
        return {"path": path, "pid": int(pid), "camid": int(camid),
                "ap": average_precision(matches),
                "gallery": [item(rank) for rank in range(min(max_rank, len(order)))],
                "first_match": item(int(hits[0])) if hits.size else None}

    def save_rank_result(self, output: str | Path, max_rank: int = DEFAULT_MAX_RANK,
                         title: str = "rank lists", rows: Sequence[int] | None = None) -> Path:
        """One figure, a row per query given to ``get_model_output`` (or per ``rows`` of
        them), written to ``output``."""
        from reid.visualize import plot_rank_list
        rows = range(len(self.query_indices)) if rows is None else rows
        return plot_rank_list([self.rank_list(row, max_rank) for row in rows], output,
                              title=title, top_k=max_rank)

    def vis_ranking_list(self, output: str | Path, num_vis: int = 10,
                         rank_sort: str = "ascending", max_rank: int = DEFAULT_MAX_RANK
                         ) -> Path:
        """The ``num_vis`` queries of lowest AP first (``ascending``) or highest
        (``descending``), as FastReID's method of that name."""
        if rank_sort not in ("ascending", "descending"):
            raise ReidError(f"rank_sort must be ascending or descending, got {rank_sort!r}")
        aps = [self.rank_list(row, 1)["ap"] for row in range(len(self.query_indices))]
        order = np.argsort(aps, kind="stable")
        order = order[::-1] if rank_sort == "descending" else order
        return self.save_rank_result(output, max_rank, title=f"rank lists, AP {rank_sort}",
                                     rows=[int(row) for row in order[:num_vis]])

    def pair_distances(self) -> tuple[np.ndarray, np.ndarray]:
        """(genuine, impostor) distances of the queries' ranked galleries (same identity and
        camera left out), as FastReID's ``plot_roc_curve`` collects them."""
        genuine, impostor = [], []
        for row in range(len(self.query_indices)):
            order, matches = self.get_matched_result(row)
            genuine.append(self.dist[row, order[matches]])
            impostor.append(self.dist[row, order[~matches]])
        return np.concatenate(genuine), np.concatenate(impostor)

    def plot_distribution(self, output: str | Path, metric: str | None = None) -> Path:
        """Histograms of the genuine and impostor pair distances."""
        from reid.visualize import plot_distance_histograms
        genuine, impostor = self.pair_distances()
        return plot_distance_histograms(genuine, impostor, output, metric=metric)


def named_query_indices(query: Sequence[Record], names: Sequence[str], dataset: str
                        ) -> list[int]:
    """The query indices named by ``names``: an index (``12``), an image file name, or a
    path as the dataset lists it."""
    by_path = {str(record[0]): index for index, record in enumerate(query)}
    by_name: dict[str, list[int]] = {}
    for index, record in enumerate(query):
        by_name.setdefault(Path(record[0]).name, []).append(index)
    indices = []
    for name in names:
        if name.lstrip("-").isdigit():
            index = int(name)
            if not 0 <= index < len(query):
                raise ReidError(f"query index {index} is outside 0..{len(query) - 1} "
                                f"({dataset} has {len(query)} queries)")
        elif name in by_path:
            index = by_path[name]
        elif len(by_name.get(Path(name).name, [])) == 1:
            index = by_name[Path(name).name][0]
        else:
            found = len(by_name.get(Path(name).name, []))
            what = "several" if found else "no"
            raise ReidError(f"{what} query image named {name!r} in {dataset} (give an index "
                            f"0..{len(query) - 1} or a query file name such as "
                            f"{Path(query[0][0]).name})")
        indices.append(index)
    return indices


def rank_lists(cfg, weights: str | Path, names: Sequence[str], output: str | Path,
               dataset: str | None = None, max_rank: int = DEFAULT_MAX_RANK) -> dict:
    """Extract ``dataset``'s (default: the first of DATASETS.TESTS) features with
    ``weights`` and draw the rank lists of the queries ``names`` into ``output``."""
    from reid.data.build import build_test_loader
    from reid.engine.launch import resolve_device
    from reid.evaluation.distance import compute_distance
    from reid.evaluation.extract import extract_features
    from reid.inference import build_inference_model

    if not names:
        raise ReidError("reid visualize needs --query INDEX|FILE (repeatable): the queries to "
                        "draw")
    dataset = dataset or cfg.DATASETS.TESTS[0]
    loader, num_query = build_test_loader(cfg, dataset)
    records = loader.dataset.records
    query, gallery = records[:num_query], records[num_query:]
    indices = named_query_indices(query, names, dataset)  # before the model: fail fast
    device = resolve_device(cfg.MODEL.DEVICE)
    model = build_inference_model(cfg, weights).to(device)
    feats, _, _ = extract_features(model, loader, device, flip=cfg.TEST.FLIP_ENABLED)
    dist = compute_distance(feats[:num_query][indices], feats[num_query:], cfg.TEST.METRIC)
    visualizer = Visualizer(query, gallery)
    visualizer.get_model_output(dist, indices)
    path = visualizer.save_rank_result(output, max_rank,
                                       title=f"{dataset}: rank lists ({cfg.TEST.METRIC})")
    return {"output": str(path), "queries": indices}
