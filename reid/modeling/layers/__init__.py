"""Building blocks shared by backbones and heads: pooling, classification and norm layers."""
from reid.modeling.layers.classification import CLS_LAYER_REGISTRY, build_cls_layer
from reid.modeling.layers.norm import NORM_REGISTRY, get_norm, wants_sync_bn
from reid.modeling.layers.pooling import POOLING_REGISTRY, build_pooling

__all__ = ["CLS_LAYER_REGISTRY", "NORM_REGISTRY", "POOLING_REGISTRY", "build_cls_layer",
           "build_pooling", "get_norm", "wants_sync_bn"]
