"""Data: datasets (by name), the synthetic generator, samplers, transforms and loaders."""
from reid.data.build import build_test_loader, build_train_loader, read_image
from reid.data.datasets import DATASET_REGISTRY, ImageDataset, Market1501, SyntheticMarket1501
from reid.data.samplers import (SAMPLER_REGISTRY, InferenceSampler, NaiveIdentitySampler,
                                ShuffledSampler)
from reid.data.synthetic import generate_synthetic_market
from reid.data.transforms import build_transforms

__all__ = ["DATASET_REGISTRY", "ImageDataset", "InferenceSampler", "Market1501",
           "NaiveIdentitySampler", "SAMPLER_REGISTRY", "ShuffledSampler", "SyntheticMarket1501",
           "build_test_loader", "build_train_loader", "build_transforms",
           "generate_synthetic_market", "read_image"]
