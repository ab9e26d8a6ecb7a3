"""Meta-architectures: ``META_ARCH_REGISTRY`` (MODEL.META_ARCHITECTURE) and ``build_model(cfg)``."""
from reid.modeling.meta_arch.build import META_ARCH_REGISTRY, build_model, classifier_weight_names
from reid.modeling.meta_arch.baseline import Baseline
from reid.modeling.meta_arch.distiller import Distiller
from reid.modeling.meta_arch.mgn import MGN
from reid.modeling.meta_arch.moco import MoCo

__all__ = ["META_ARCH_REGISTRY", "Baseline", "Distiller", "MGN", "MoCo", "build_model",
           "classifier_weight_names"]
