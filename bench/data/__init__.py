"""Image classification datasets read from their official on-disk formats into memory (never downloaded)."""

from bench.data.base import DatasetInfo, DatasetNotFoundError, ImageSplit
from bench.data.catalog import DATASETS, dataset_info, load_dataset

__all__ = ["DATASETS", "DatasetInfo", "DatasetNotFoundError", "ImageSplit", "dataset_info", "load_dataset"]
