"""Datasets by name: ``DATASET_REGISTRY.get(name)(root)`` gives train/query/gallery records."""
from reid.data.datasets.bases import DATASET_REGISTRY, ImageDataset, Record
from reid.data.datasets.cuhk03 import CUHK03, CUHK03Labeled
from reid.data.datasets.dukemtmc import DukeMTMC
from reid.data.datasets.market1501 import (Market1501, MarketLayoutDataset, SyntheticMarket1501,
                                           parse_market_name, read_market_split)
from reid.data.datasets.msmt17 import MSMT17
from reid.data.datasets.named_files import (GRID, PKU, PRAI, AirportALERT, CAVIARa, SenseReID,
                                            Shinpuhkan, VIPeR, cuhkSYSU)
from reid.data.datasets.person_folders import (LPW, PRID, SAIVT, PeS3D, SYSU_mm, Thermalworld,
                                               WildTrackCrop, iLIDS)
from reid.data.datasets.split_folders import SplitFoldersDataset
from reid.data.datasets.train_only import TrainOnlyDataset
from reid.data.datasets.vehicleid import (LargeVehicleID, MediumVehicleID, SmallVehicleID,
                                          VehicleID)
from reid.data.datasets.veri import VeRi
from reid.data.datasets.veriwild import LargeVeRiWild, MediumVeRiWild, SmallVeRiWild, VeRiWild

__all__ = ["AirportALERT", "CAVIARa", "CUHK03", "CUHK03Labeled", "DATASET_REGISTRY", "DukeMTMC",
           "GRID", "ImageDataset", "LPW", "LargeVeRiWild", "LargeVehicleID", "MSMT17",
           "Market1501", "MarketLayoutDataset", "MediumVeRiWild", "MediumVehicleID", "PKU",
           "PRAI", "PRID", "PeS3D", "Record", "SAIVT", "SYSU_mm", "SenseReID", "Shinpuhkan",
           "SmallVeRiWild", "SmallVehicleID", "SplitFoldersDataset", "SyntheticMarket1501",
           "Thermalworld", "TrainOnlyDataset", "VIPeR", "VeRi", "VeRiWild", "VehicleID",
           "WildTrackCrop", "cuhkSYSU", "iLIDS", "parse_market_name", "read_market_split"]
