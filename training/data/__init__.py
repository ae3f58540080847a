"""Datasets as in-memory uint8 arrays with a fixed train/val/test split.

Every loader reads local files in the dataset's standard on-disk format; nothing is downloaded.
``load_dataset(name, data_dir)`` returns ``DataSplits``: the validation split is carved from the
training files with a seeded permutation (or, for a loader that finds one on disk, is the one
given), so no choice is ever made on the test split.

A bundle made by ``skipvit import hf`` (``dataset.name`` is ``imported``) records no dataset: its
labels, image size, channels, normalisation and resampling filter are fixed by the model.
``load_bundle_splits`` reads such a bundle's data from a ``folder`` dataset that the command
names (``--data folder --data-dir DIR``), with those settings taken from the bundle, so the images
come in as the model and the server take them.
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
    loaded = _loader(name)(data_dir, **kwargs)
    if len(loaded) == 4:  # the loader found a validation split on disk
        info, train, test, val = loaded
    else:
        info, train_full, test = loaded
        train, val = split_train_val(train_full, val_fraction, seed)
    return DataSplits(info=info, train=train, val=val, test=test)


IMPORTED = "imported"  # dataset.name of a bundle made by `skipvit import hf`
BUNDLE_DATA = ("folder",)  # what a command may name with --data for an imported bundle


def imported_options(dataset: dict, resample: str = "bilinear", crop: dict | None = None) -> dict:
    """The ``folder`` loader's options that make an imported bundle's input: its labels in its
    order, its image size and channels, its normalisation, its resampling filter, and its
    processor's resize + center crop where it crops (``crop``)."""
    crop = crop or {}
    return {
        "resize": list(crop["resize"]) if crop.get("resize") else None,
        "center_crop": list(crop["center_crop"]) if crop.get("center_crop") else None,
        "classes": list(dataset["classes"]),
        "image_size": int(dataset["image_size"]),
        "channels": int(dataset["channels"]),
        "mean": list(dataset["mean"]),
        "std": list(dataset["std"]),
        "resample": resample,
        "hflip": bool(dataset.get("hflip", False)),
    }


def load_bundle_splits(
    dataset: dict,
    data_dir: str | Path | None = None,
    *,
    data: str | None = None,
    resample: str = "bilinear",
    crop: dict | None = None,
    split: dict | None = None,
) -> DataSplits:
    """The splits a bundle was trained on, from its ``dataset`` entry (name, split, options); for an
    imported bundle, the ``folder`` dataset in ``data_dir`` read as the model takes it
    (``imported_options``; ``resample`` and ``crop`` are the bundle's: ``bundle_input``). ``data``: what the command line named
    with ``--data`` (None: the bundle's own). ``split``: the train/val split, when not the one the
    entry records."""
    split = dataset.get("split", {}) if split is None else split
    name = dataset["name"]
    if name == IMPORTED:
        if data not in (None, *BUNDLE_DATA):
            raise ValueError(
                f"--data {data}: a bundle imported from elsewhere reads its labelled images from an "
                "image folder whose class folders are its labels; Hint: pass --data folder --data-dir DIR"
            )
        if data_dir is None:
            raise ValueError(
                "this bundle was imported (skipvit import hf) and records no dataset; Hint: pass "
                "--data folder --data-dir DIR, DIR holding train/ and test/ (and val/) with one "
                f"folder of images per class, named after its labels ({', '.join(dataset['classes'][:5])}"
                f"{', ...' if len(dataset['classes']) > 5 else ''})"
            )
        return load_dataset("folder", data_dir, **split, **imported_options(dataset, resample, crop))
    if data is not None and data != name:
        raise ValueError(
            f"--data {data}: this bundle was trained on {name!r}, which its searches and "
            "evaluations read; Hint: leave out --data"
        )
    return load_dataset(name, data_dir, **split, **dataset.get("options", {}))


def bundle_input(bundle) -> dict:
    """How a loaded bundle's model takes an image of another size, as ``load_bundle_splits``'s
    ``resample`` and ``crop``: its ``preprocess`` section's filter (else bilinear) and, where its
    processor crops, the resize and center crop."""
    pre = bundle.preprocess
    if pre is None:
        return {"resample": "bilinear", "crop": None}
    crop = {"resize": pre.resize, "center_crop": pre.center_crop} if pre.center_crop is not None else None
    return {"resample": pre.resample, "crop": crop}


def bundle_data(bundle, data_dir: str | Path | None = None, data: str | None = None) -> DataSplits:
    """``load_bundle_splits`` for a loaded bundle (its dataset entry and resampling filter)."""
    return load_bundle_splits(bundle.dataset, data_dir, data=data, **bundle_input(bundle))


__all__ = [
    "BUNDLE_DATA",
    "DATASETS",
    "IMPORTED",
    "ArrayData",
    "DataSplits",
    "DatasetInfo",
    "bundle_data",
    "bundle_input",
    "imported_options",
    "load_bundle_splits",
    "load_dataset",
    "split_train_val",
]
