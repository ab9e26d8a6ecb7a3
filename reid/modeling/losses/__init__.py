"""Losses: ``LOSS_REGISTRY`` (MODEL.LOSSES.NAME, FastReID's names) and ``build_losses(cfg)``."""
from reid.modeling.losses.build import LOSS_REGISTRY, build_losses
from reid.modeling.losses.cross_entropy import CrossEntropyLoss, cross_entropy_loss
from reid.modeling.losses.distillation import KD_LOSS_REGISTRY, distillation_loss
from reid.modeling.losses.focal import FocalLoss, focal_loss
from reid.modeling.losses.pairwise import (CircleLoss, CosfaceLoss, pairwise_circle_loss,
                                           pairwise_cosface_loss)
from reid.modeling.losses.triplet import TripletLoss, triplet_loss

__all__ = ["LOSS_REGISTRY", "KD_LOSS_REGISTRY", "build_losses", "distillation_loss",
           "CrossEntropyLoss", "FocalLoss", "TripletLoss", "CircleLoss", "CosfaceLoss",
           "cross_entropy_loss", "focal_loss", "triplet_loss", "pairwise_circle_loss",
           "pairwise_cosface_loss"]
