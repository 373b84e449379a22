"""Datasets for the benchmark harness: synthetic generators, real-format readers, a registry.

>>> from skipdsl.data import load_dataset, list_datasets
>>> ds = load_dataset("nuclei2d", seed=0)          # generated once, then cached as .npz
>>> ds.images.shape, ds.masks.shape, ds.in_channels, ds.num_classes
>>> load_dataset("brats19", root="/data")          # /data/brats19/{HGG,LGG}/<case>/...
>>> list_datasets("/data")                         # synthetic + every real one found

Importing this package pulls in numpy only; nibabel, SimpleITK, scipy, torch and matplotlib
are imported by the functions that need them.
"""
from .base import DATASETS, DataWarning, LoadOptions, SegDataset, make_splits
from .loading import (default_cache_dir, expand_datasets, list_datasets, load_dataset, read_npz,
                      write_npz)
from .show import show

__all__ = [
    "DATASETS", "DataWarning", "LoadOptions", "SegDataset", "default_cache_dir",
    "expand_datasets", "list_datasets", "load_dataset", "make_splits", "read_npz", "show",
    "write_npz",
]
