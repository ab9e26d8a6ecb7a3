"""A dataset is three lists of ``(img_path, pid, camid)`` records plus a summary.

Add a dataset by subclassing ``ImageDataset`` and registering it::

    @DATASET_REGISTRY.register()
    class MyDataset(ImageDataset):
        def __init__(self, root="data"):
            super().__init__(train=[...], query=[...], gallery=[...])

It is then built by name: ``DATASET_REGISTRY.get("MyDataset")(cfg.DATASETS.ROOT)``.
"""
from __future__ import annotations

import logging
from typing import Sequence

from reid.utils.registry import Registry

logger = logging.getLogger(__name__)

DATASET_REGISTRY = Registry("dataset")

Record = tuple[str, int, int]  # (img_path, pid, camid), camid 0-based


class ImageDataset:
    """Train, query and gallery records of one dataset.

    ``junk_pids`` are identities that are not people to learn (Market's distractors, pid 0):
    they stay in the gallery for evaluation but are left out when query and gallery are
    combined into training data (``DATASETS.COMBINEALL``).
    """

    junk_pids: tuple[int, ...] = ()

    def __init__(self, train: Sequence[Record], query: Sequence[Record],
                 gallery: Sequence[Record]) -> None:
        self.train = list(train)
        self.query = list(query)
        self.gallery = list(gallery)

    @property
    def name(self) -> str:
        return type(self).__name__

    def combined_train(self) -> list[Record]:
        """Train records plus the query and gallery ones of real identities (for COMBINEALL)."""
        extra = [r for r in self.query + self.gallery if r[1] not in self.junk_pids]
        return self.train + extra

    @staticmethod
    def describe(records: Sequence[Record]) -> dict[str, int]:
        return {"ids": len({r[1] for r in records}), "images": len(records),
                "cameras": len({r[2] for r in records})}

    def summary(self) -> str:
        """A table of identities / images / cameras per split."""
        header = f"{'subset':<8} | {'# ids':>6} | {'# images':>8} | {'# cameras':>9}"
        lines = [f"dataset {self.name}:", header, "-" * len(header)]
        for split in ("train", "query", "gallery"):
            d = self.describe(getattr(self, split))
            lines.append(f"{split:<8} | {d['ids']:>6} | {d['images']:>8} | {d['cameras']:>9}")
        return "\n".join(lines)

    def log_summary(self, level: int = logging.INFO) -> None:
        logger.log(level, "%s", self.summary())
