"""Fixture directories holding tiny datasets in their real on-disk formats (see fixtures.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.fixtures import (
    write_cifar10,
    write_cifar100,
    write_fashion_mnist,
    write_image_folder,
    write_tiny_imagenet,
)


def _written(write, root: Path) -> Path:
    """``root``, filled by ``write``."""
    write(root)
    return root


@pytest.fixture
def fashion_dir(tmp_path: Path) -> Path:
    return _written(write_fashion_mnist, tmp_path / "fmnist")


@pytest.fixture
def cifar10_dir(tmp_path: Path) -> Path:
    return _written(write_cifar10, tmp_path / "c10")


@pytest.fixture
def cifar100_dir(tmp_path: Path) -> Path:
    return _written(write_cifar100, tmp_path / "cifar-100-python")


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    return write_tiny_imagenet(tmp_path)


@pytest.fixture
def folder_dir(tmp_path: Path) -> Path:
    return _written(write_image_folder, tmp_path / "imgs")
