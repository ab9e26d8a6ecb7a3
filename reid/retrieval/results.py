"""What ``reid search`` writes: the hits as CSV / JSON, and the rank-list figure."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

from reid.utils.io import atomic_write_json, atomic_write_text

HIT_FIELDS = ("query", "rank", "id", "distance", "path", "pid", "camid")


def hit_rows(queries: Sequence[str], result) -> list[dict]:
    """One dict per (query, rank), rank from 1."""
    return [{"query": query, "rank": rank + 1, "id": int(result.ids[row, rank]),
             "distance": float(result.distances[row, rank]),
             "path": str(result.paths[row, rank]), "pid": int(result.pids[row, rank]),
             "camid": int(result.camids[row, rank])}
            for row, query in enumerate(queries) for rank in range(result.ids.shape[1])]


def write_hits(path: str | Path, queries: Sequence[str], result) -> Path:
    """``.json``: ``{query: [hit, ...]}``; ``.csv``: one line per hit (``HIT_FIELDS``)."""
    rows = hit_rows(queries, result)
    if Path(path).suffix.lower() == ".json":
        grouped: dict[str, list[dict]] = {}
        for row in rows:
            grouped.setdefault(row["query"], []).append(
                {key: value for key, value in row.items() if key != "query"})
        return atomic_write_json(path, grouped)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=HIT_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, text.getvalue())


def write_rank_figure(path: str | Path, queries: Sequence[str], result) -> Path:
    """The rank-list figure of :mod:`reid.visualize`: each query with its hits (frames
    neutral: a query's identity is unknown to a search)."""
    from reid.visualize import plot_rank_list
    records = [{"path": query, "pid": "?", "camid": "?",
                "gallery": [{"path": str(result.paths[row, rank]),
                             "pid": int(result.pids[row, rank]),
                             "camid": int(result.camids[row, rank]),
                             "distance": float(result.distances[row, rank]), "match": None}
                            for rank in range(result.ids.shape[1])]}
               for row, query in enumerate(queries)]
    return plot_rank_list(records, path, title="search results")
