"""A generated dataset for tests: each class is a bright bar at its own position and angle,
plus noise, so a tiny model learns it in seconds."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from skipvit.training.data.base import ArrayData, DatasetInfo


def _make(n: int, classes: int, size: int, channels: int, g: torch.Generator) -> ArrayData:
    labels = torch.randint(0, classes, (n,), generator=g)
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    c = (size - 1) / 2
    imgs = torch.empty(n, channels, size, size)
    for k in range(classes):
        angle = math.pi * k / classes
        dist = (xs - c) * math.sin(angle) - (ys - c) * math.cos(angle)  # (H, W)
        bar = (dist.abs() < max(1.0, size / 10)).float()  # (H, W)
        sel = labels == k
        imgs[sel] = bar
    imgs = imgs * 0.8 + 0.35 * torch.rand(imgs.shape, generator=g)
    return ArrayData((imgs.clamp(0, 1) * 255).to(torch.uint8), labels)


def load(
    data_dir: str | Path | None = None,
    *,
    n_train: int = 2000,
    n_test: int = 500,
    classes: int = 4,
    image_size: int = 16,
    channels: int = 1,
    seed: int = 1234,
) -> tuple[DatasetInfo, ArrayData, ArrayData]:
    g = torch.Generator().manual_seed(seed)
    train = _make(n_train, classes, image_size, channels, g)
    test = _make(n_test, classes, image_size, channels, g)
    info = DatasetInfo(
        "synthetic",
        tuple(f"class{k}" for k in range(classes)),
        image_size,
        channels,
        (0.3,) * channels,
        (0.3,) * channels,
        hflip=False,
    )
    return info, train, test
