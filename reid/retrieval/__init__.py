"""Retrieval at scale: a gallery index over re-id features (faiss), saved and searched.

``Gallery`` (:mod:`reid.retrieval.gallery`) builds a faiss index of any factory string over
features with their metadata, searches it with features or images, and saves / loads it
(:mod:`reid.retrieval.store`). ``reid index build`` and ``reid search`` are its commands
(:mod:`reid.retrieval.commands`); approximate evaluation uses it through
:mod:`reid.evaluation.approximate`.

``Gallery`` and ``SearchResult`` are imported on first use: the CLI imports the commands
module of this package to build its parser, which must not load torch or faiss.
"""
__all__ = ["Gallery", "SearchResult"]


def __getattr__(name: str):
    if name in __all__:
        from reid.retrieval import gallery
        return getattr(gallery, name)
    raise AttributeError(f"module 'reid.retrieval' has no attribute {name!r}")
