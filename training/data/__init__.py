"""Datasets as in-memory uint8 arrays with a fixed train/val/test split.

Every loader reads local files in the dataset's standard on-disk format; nothing is downloaded.
``load_dataset(name, data_dir)`` returns ``DataSplits``: the validation split is carved from the
training files with a seeded permutation, so no choice is ever made on the test split.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from skipvit.training.data.base import ArrayData, DatasetInfo, DataSplits, split_train_val

Loader = Callable[..., tuple[DatasetInfo, ArrayData, ArrayData]]


_LOADERS: dict[str, str] = {
    "fashion-mnist": "fashion_mnist:load",
    "cifar10": "cifar:load_cifar10",
    "cifar100": "cifar:load_cifar100",
    "tiny-imagenet": "tiny_imagenet:load",
    "folder": "folder:load",
    "synthetic": "synthetic:load",
}


def _loader(name: str) -> Loader:
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    module, func = _LOADERS[name].split(":")
    return getattr(importlib.import_module(f"skipvit.training.data.{module}"), func)


DATASETS = tuple(_LOADERS)


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    **kwargs,
) -> DataSplits:
    info, train_full, test = _loader(name)(data_dir, **kwargs)
    train, val = split_train_val(train_full, val_fraction, seed)
    return DataSplits(info=info, train=train, val=val, test=test)


def load_bundle_splits(dataset: dict, data_dir: str | Path | None = None) -> DataSplits:
    """The splits a bundle was trained on, from its ``dataset`` entry (name, split, options)."""
    return load_dataset(dataset["name"], data_dir, **dataset.get("split", {}), **dataset.get("options", {}))


__all__ = [
    "DATASETS",
    "ArrayData",
    "DataSplits",
    "DatasetInfo",
    "load_bundle_splits",
    "load_dataset",
    "split_train_val",
]
