"""Baseline: backbone + head + losses, FastReID's standard re-id model."""
from __future__ import annotations

import torch
from torch import nn

from reid.errors import ReidError
from reid.modeling.backbones import build_backbone
from reid.modeling.heads import build_heads
from reid.modeling.losses import build_losses
from reid.modeling.meta_arch.build import META_ARCH_REGISTRY


def drop_pixel_statistics(module, state_dict, prefix, *args) -> None:
    """Ignore ``pixel_mean`` / ``pixel_std`` in a checkpoint: some FastReID checkpoints carry
    them, but here they come from the config, so a strict load must not trip on them."""
    for name in ("pixel_mean", "pixel_std"):
        state_dict.pop(prefix + name, None)


@META_ARCH_REGISTRY.register()
class Baseline(nn.Module):
    """``model(batch)``: training -> dict of named losses; eval -> B x D retrieval features.

    ``batch`` is a loader dict (``images`` float 0..255, ``targets``) or, in eval, an image tensor.
    """

    def __init__(self, cfg) -> None:
        super().__init__()
        self.backbone = build_backbone(cfg)
        self.heads = build_heads(cfg)
        # a plain list, not a module attribute: losses hold no state to save
        self.loss_fns = build_losses(cfg)
        # not persistent: normalisation comes from the config, not from a checkpoint (FastReID)
        self.register_buffer("pixel_mean", self._channel_vector(cfg.MODEL.PIXEL_MEAN, "PIXEL_MEAN"),
                             persistent=False)
        self.register_buffer("pixel_std", self._channel_vector(cfg.MODEL.PIXEL_STD, "PIXEL_STD"),
                             persistent=False)
        self.register_load_state_dict_pre_hook(drop_pixel_statistics)

    @staticmethod
    def _channel_vector(values, key: str) -> torch.Tensor:
        if len(values) != 3:
            raise ReidError(f"MODEL.{key} must hold 3 values (R, G, B on the 0..255 scale); "
                            f"got {list(values)}")
        return torch.tensor([float(v) for v in values]).view(1, 3, 1, 1)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batch) -> torch.Tensor:
        images = batch["images"] if isinstance(batch, dict) else batch
        if not isinstance(images, torch.Tensor):
            raise ReidError(f"the model expects an image tensor or a batch dict with 'images'; "
                            f"got {type(images).__name__}")
        images = images.to(self.device, dtype=self.pixel_mean.dtype, non_blocking=True)
        return (images - self.pixel_mean) / self.pixel_std

    def targets_of(self, batch) -> torch.Tensor:
        if not isinstance(batch, dict) or batch.get("targets") is None:
            raise ReidError("a training forward needs a batch dict with 'targets' (the identity "
                            "labels); call model.eval() to extract features")
        return batch["targets"].to(self.device, dtype=torch.long, non_blocking=True)

    @property
    def takes_camids(self) -> bool:
        """Whether the backbone uses camera ids (then pass a batch dict with 'camids')."""
        return getattr(self.backbone, "takes_camids", False)

    def backbone_features(self, batch) -> torch.Tensor:
        """The backbone's feature map; camera ids go along to backbones that use them (ViT SIE)."""
        images = self.preprocess_image(batch)
        if not self.takes_camids:
            return self.backbone(images)
        camids = batch.get("camids") if isinstance(batch, dict) else None
        if camids is not None:
            camids = camids.to(self.device, dtype=torch.long, non_blocking=True)
        return self.backbone(images, camids=camids)

    def forward(self, batch):
        if not self.training:
            return self.heads(self.backbone_features(batch))
        targets = self.targets_of(batch)
        outputs = self.heads(self.backbone_features(batch), targets)
        return self.losses(outputs, targets)

    def losses(self, outputs: dict, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every loss of MODEL.LOSSES.NAME, each already scaled; their sum is the training loss."""
        result: dict[str, torch.Tensor] = {}
        for loss_fn in self.loss_fns:
            result.update(loss_fn(outputs, targets))
        return result
