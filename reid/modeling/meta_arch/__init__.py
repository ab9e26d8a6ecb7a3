"""Meta-architectures: ``META_ARCH_REGISTRY`` (MODEL.META_ARCHITECTURE) and ``build_model(cfg)``."""
from reid.modeling.meta_arch.build import META_ARCH_REGISTRY, build_model
from reid.modeling.meta_arch.baseline import Baseline
from reid.modeling.meta_arch.distiller import Distiller

__all__ = ["META_ARCH_REGISTRY", "Baseline", "Distiller", "build_model"]
