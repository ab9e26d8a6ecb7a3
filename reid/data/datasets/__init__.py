"""Datasets by name: ``DATASET_REGISTRY.get(name)(root)`` gives train/query/gallery records."""
from reid.data.datasets.bases import DATASET_REGISTRY, ImageDataset, Record
from reid.data.datasets.market1501 import (Market1501, MarketLayoutDataset, SyntheticMarket1501,
                                           parse_market_name, read_market_split)

__all__ = ["DATASET_REGISTRY", "ImageDataset", "Market1501", "MarketLayoutDataset", "Record",
           "SyntheticMarket1501", "parse_market_name", "read_market_split"]
