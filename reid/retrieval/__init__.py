"""Retrieval at scale: a gallery index over re-id features (faiss), saved and searched.

``Gallery`` (:mod:`reid.retrieval.gallery`) builds a faiss index of any factory string over
features with their metadata, searches it with features or images, and saves / loads it
(:mod:`reid.retrieval.store`). ``reid index build`` and ``reid search`` are its commands
(:mod:`reid.retrieval.commands`); approximate evaluation uses it through
:mod:`reid.evaluation.approximate`.
"""
from reid.retrieval.gallery import Gallery, SearchResult

__all__ = ["Gallery", "SearchResult"]
