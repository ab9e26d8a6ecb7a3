"""Heads: ``HEAD_REGISTRY`` (MODEL.HEADS.NAME) and ``build_heads(cfg)``."""
from reid.modeling.heads.build import HEAD_REGISTRY, build_heads
from reid.modeling.heads import embedding_head  # noqa: F401  (registers EmbeddingHead)
from reid.modeling.heads.clas_head import ClasHead
from reid.modeling.heads.embedding_head import EmbeddingHead

__all__ = ["HEAD_REGISTRY", "ClasHead", "EmbeddingHead", "build_heads"]
