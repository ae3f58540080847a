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


@pytest.fixture
def fashion_dir(tmp_path: Path) -> Path:
    write_fashion_mnist(tmp_path / "fmnist")
    return tmp_path / "fmnist"


@pytest.fixture
def cifar10_dir(tmp_path: Path) -> Path:
    write_cifar10(tmp_path / "c10")
    return tmp_path / "c10"


@pytest.fixture
def cifar100_dir(tmp_path: Path) -> Path:
    write_cifar100(tmp_path / "cifar-100-python")
    return tmp_path / "cifar-100-python"


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    return write_tiny_imagenet(tmp_path)


@pytest.fixture
def folder_dir(tmp_path: Path) -> Path:
    write_image_folder(tmp_path / "imgs")
    return tmp_path / "imgs"
