"""Datasets by name: ``DATASET_REGISTRY.get(name)(root)`` gives train/query/gallery records."""
from reid.data.datasets.bases import DATASET_REGISTRY, ImageDataset, Record
from reid.data.datasets.cuhk03 import CUHK03, CUHK03Labeled
from reid.data.datasets.dukemtmc import DukeMTMC
from reid.data.datasets.market1501 import (Market1501, MarketLayoutDataset, SyntheticMarket1501,
                                           parse_market_name, read_market_split)
from reid.data.datasets.msmt17 import MSMT17
from reid.data.datasets.split_folders import SplitFoldersDataset
from reid.data.datasets.vehicleid import (LargeVehicleID, MediumVehicleID, SmallVehicleID,
                                          VehicleID)
from reid.data.datasets.veri import VeRi

__all__ = ["CUHK03", "CUHK03Labeled", "DATASET_REGISTRY", "DukeMTMC", "ImageDataset",
           "LargeVehicleID", "MSMT17", "Market1501", "MarketLayoutDataset", "MediumVehicleID",
           "Record", "SmallVehicleID", "SplitFoldersDataset", "SyntheticMarket1501", "VeRi",
           "VehicleID", "parse_market_name", "read_market_split"]
