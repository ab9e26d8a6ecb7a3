"""FastReID's ClasHead: the EmbeddingHead's layers used as a classifier.

Same pooling, BNNeck and class weights as :class:`EmbeddingHead` (so the same state-dict keys
and checkpoints), but evaluation returns the class logits (cosine layers: scaled cosines;
linear: dot products) instead of the retrieval feature, for image classification or
attribute recognition. Training returns what EmbeddingHead returns, with the neck feature
(after the BNNeck) as ``features`` whatever MODEL.HEADS.NECK_FEAT says, as in FastReID.
"""
from __future__ import annotations

import torch

from reid.errors import ReidError
from reid.modeling.heads.build import HEAD_REGISTRY
from reid.modeling.heads.embedding_head import EmbeddingHead


@HEAD_REGISTRY.register()
class ClasHead(EmbeddingHead):
    def forward(self, features: torch.Tensor, targets: torch.Tensor | None = None):
        """Eval: B x NUM_CLASSES logits. Training: margin logits, logits, neck feature."""
        _, neck = self.neck(features)
        sims = self.cls_layer.similarities(neck, self.weight)
        if not self.training:
            return self.cls_layer.plain_logits(sims)
        if targets is None:
            raise ReidError("the head needs targets in training mode (the margin layers use "
                            "them); call model.eval() to get class logits")
        return {
            "cls_outputs": self.cls_layer(sims, targets),
            "pred_class_logits": self.cls_layer.plain_logits(sims),
            "features": neck,
        }
