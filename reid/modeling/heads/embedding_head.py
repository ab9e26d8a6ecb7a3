"""FastReID's EmbeddingHead: pooling -> BNNeck (optional 1x1 embedding conv) -> classifier.

State-dict layout as FastReID: ``pool_layer.*``, ``bottleneck.0.*`` (the embedding conv, or the
BN when there is no embedding), ``weight`` (num_classes x neck dim), so checkpoints load by name.
"""
from __future__ import annotations

import torch
from torch import nn

from reid.errors import ReidError
from reid.modeling.heads.build import HEAD_REGISTRY
from reid.modeling.layers import build_cls_layer, build_pooling, get_norm


def frozen_bias_norm(norm: str, channels: int) -> nn.Module:
    """The BNNeck's BN: its shift is fixed at 0 so features stay centred for the cosine metric."""
    bn = get_norm(norm, channels)
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    bn.bias.requires_grad_(False)
    return bn


@HEAD_REGISTRY.register()
class EmbeddingHead(nn.Module):
    def __init__(self, cfg) -> None:
        super().__init__()
        heads = cfg.MODEL.HEADS
        if heads.NUM_CLASSES <= 0:
            raise ReidError(f"MODEL.HEADS.NUM_CLASSES is {heads.NUM_CLASSES}; set "
                            "MODEL.HEADS.NUM_CLASSES or let the train stage take it from the "
                            "dataset")
        self.neck_feat = heads.NECK_FEAT
        self.pool_layer = build_pooling(heads.POOL_LAYER)
        self.bottleneck, neck_dim = self._build_bottleneck(
            cfg.MODEL.BACKBONE.FEAT_DIM, heads.EMBEDDING_DIM, heads.WITH_BNNECK, heads.NORM)
        self.cls_layer = build_cls_layer(heads.CLS_LAYER, heads.SCALE, heads.MARGIN)
        self.weight = nn.Parameter(torch.empty(heads.NUM_CLASSES, neck_dim))
        nn.init.normal_(self.weight, std=0.01)

    @staticmethod
    def _build_bottleneck(feat_dim: int, embedding_dim: int, with_bnneck: bool,
                          norm: str) -> tuple[nn.Sequential, int]:
        layers: list[nn.Module] = []
        dim = feat_dim
        if embedding_dim > 0:
            conv = nn.Conv2d(feat_dim, embedding_dim, 1, bias=False)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            layers.append(conv)
            dim = embedding_dim
        if with_bnneck:
            layers.append(frozen_bias_norm(norm, dim))
        return nn.Sequential(*layers), dim

    def neck(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled B x C, neck B x D) features of a backbone map."""
        pooled = self.pool_layer(features)
        return pooled.flatten(1), self.bottleneck(pooled).flatten(1)

    def class_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Logits without margin (``pred_class_logits``) in either mode; a teacher uses this."""
        _, neck = self.neck(features)
        return self.cls_layer.plain_logits(self.cls_layer.similarities(neck, self.weight))

    def forward(self, features: torch.Tensor, targets: torch.Tensor | None = None):
        """Eval: the B x D retrieval feature. Training: logits and the metric-loss feature."""
        pooled, neck = self.neck(features)
        if not self.training:
            return neck
        if targets is None:
            raise ReidError("the head needs targets in training mode (the margin layers use "
                            "them); call model.eval() to extract features")
        sims = self.cls_layer.similarities(neck, self.weight)
        return {
            "cls_outputs": self.cls_layer(sims, targets),
            "pred_class_logits": self.cls_layer.plain_logits(sims),
            "features": pooled if self.neck_feat == "before" else neck,
        }
