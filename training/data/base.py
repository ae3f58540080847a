"""Containers shared by every dataset loader."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    classes: tuple[str, ...]
    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool = True  # whether horizontal flips preserve the label

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["classes"] = list(self.classes)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


@dataclass
class ArrayData:
    images: Tensor  # (N, C, H, W) uint8
    labels: Tensor  # (N,) int64

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"images must be (N, C, H, W) uint8, got {tuple(self.images.shape)} {self.images.dtype}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must be (N,) and match the images")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, idx: Tensor) -> ArrayData:
        return ArrayData(self.images[idx], self.labels[idx])

    def head(self, n: int | None) -> ArrayData:
        return self if n is None else ArrayData(self.images[:n], self.labels[:n])

    def batches(
        self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield self.images[idx], self.labels[idx]


@dataclass
class DataSplits:
    info: DatasetInfo
    train: ArrayData
    val: ArrayData
    test: ArrayData

    def split(self, name: str) -> ArrayData:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; choose train, val or test")
        return getattr(self, name)


def split_train_val(data: ArrayData, val_fraction: float, seed: int) -> tuple[ArrayData, ArrayData]:
    """Carve a seeded validation split from the training files."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError("val_fraction must lie in [0, 1)")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(data), generator=g)
    n_val = round(len(data) * val_fraction)
    return data.subset(perm[n_val:].sort().values), data.subset(perm[:n_val].sort().values)


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std in [0, 1] units of a uint8 (N, C, H, W) tensor."""
    x = images.float().div_(255.0)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())
