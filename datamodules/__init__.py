"""LightningDataModules, one file per data set; ``samples/`` holds the offline sample builders."""

from datamodules.base import DATA_ENV, DataNotFoundError, data_root, resolve_data_dir
from datamodules.mnist import FashionMNISTDataModule, MNISTDataModule

__all__ = [
    "DATA_ENV",
    "DataNotFoundError",
    "FashionMNISTDataModule",
    "MNISTDataModule",
    "data_root",
    "resolve_data_dir",
]
