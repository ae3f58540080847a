"""Dataset loaders on tiny fixtures written in each dataset's real on-disk format."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from skipvit.training.data import ArrayData, cifar, fashion_mnist, folder, load_dataset, tiny_imagenet
from tests.training.fixtures import (
    CIFAR100_TRAIN,
    CIFAR_PER_BATCH,
    CIFAR_TEST,
    FASHION_TEST,
    FASHION_TRAIN,
    FOLDER_CLASSES,
    FOLDER_PER_CLASS,
    TINY_TRAIN_PER_CLASS,
    TINY_VAL,
    TINY_WNIDS,
    write_cifar10,
    write_cifar100,
    write_fashion_mnist,
    write_idx,
    write_image_folder,
)


def _rows(data: ArrayData) -> set[bytes]:
    """Each (image, label) pair as bytes, to compare splits by content."""
    return {
        img.numpy().tobytes() + bytes([int(lbl)]) for img, lbl in zip(data.images, data.labels, strict=True)
    }


def _check(data: ArrayData, n: int, shape: tuple[int, int, int]) -> None:
    assert data.images.shape == (n, *shape)
    assert data.images.dtype == torch.uint8 and data.labels.dtype == torch.int64


# --- fashion-mnist -------------------------------------------------------------------------------


def test_fashion_mnist_reads_idx(tmp_path: Path) -> None:
    arrays = write_fashion_mnist(tmp_path)
    info, train, test = fashion_mnist.load(tmp_path)
    _check(train, FASHION_TRAIN, (1, 28, 28))
    _check(test, FASHION_TEST, (1, 28, 28))
    assert np.array_equal(train.images[:, 0].numpy(), arrays["train_images"])
    assert np.array_equal(test.labels.numpy(), arrays["test_labels"])
    assert info.classes == fashion_mnist.CLASSES and info.channels == 1 and info.image_size == 28


def test_fashion_mnist_missing_dir_names_dir_and_package(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as e:
        fashion_mnist.load(missing)
    msg = str(e.value)
    assert str(missing) in msg and "dataset-fashion-mnist" in msg and "Hint:" in msg


@pytest.mark.parametrize("truncate", [1, 784])
def test_fashion_mnist_truncated_idx(fashion_dir: Path, truncate: int) -> None:
    path = fashion_dir / "train-images-idx3-ubyte.gz"
    write_idx(path, np.zeros((FASHION_TRAIN, 28, 28), np.uint8), truncate=truncate)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz"):
        fashion_mnist.load(fashion_dir)


def test_fashion_mnist_bad_magic(fashion_dir: Path) -> None:
    path = fashion_dir / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\x00\x00\x0d\x01" + b"\x00" * 8)  # float IDX, not unsigned byte
    with pytest.raises(ValueError, match="t10k-labels"):
        fashion_mnist.load(fashion_dir)


# --- CIFAR ---------------------------------------------------------------------------------------


def test_cifar10_reads_python2_batches(tmp_path: Path) -> None:
    arrays = write_cifar10(tmp_path)
    for data_dir in (tmp_path, tmp_path / "cifar-10-batches-py"):  # the parent or the folder itself
        info, train, test = cifar.load_cifar10(data_dir)
        _check(train, 5 * CIFAR_PER_BATCH, (3, 32, 32))
        _check(test, CIFAR_TEST, (3, 32, 32))
        assert info.name == "cifar10" and info.classes[:3] == ("airplane", "automobile", "bird")
        assert info.num_classes == 10 and info.hflip and info.mean == cifar.MEAN_10
        first = arrays["data_batch_1"][0]
        for c in range(3):  # channel planes, each row-major 32x32
            assert np.array_equal(
                train.images[0, c].numpy(), first[c * 1024 : (c + 1) * 1024].reshape(32, 32)
            )
        last = arrays["data_batch_5"][-1].reshape(3, 32, 32)
        assert np.array_equal(train.images[-1].numpy(), last)
        assert np.array_equal(test.labels.numpy(), arrays["test_batch_labels"])


@pytest.mark.parametrize("mode", ["fine", "coarse"])
def test_cifar100_reads_python3_pickles(cifar100_dir: Path, tmp_path: Path, mode: str) -> None:
    arrays = write_cifar100(tmp_path / "again")  # same seed, same content
    info, train, test = cifar.load_cifar100(cifar100_dir, label_mode=mode)
    _check(train, CIFAR100_TRAIN, (3, 32, 32))
    _check(test, CIFAR_TEST, (3, 32, 32))
    assert info.num_classes == (100 if mode == "fine" else 20)
    assert info.classes[1] == f"{mode}1" and info.mean == cifar.MEAN_100
    assert np.array_equal(train.labels.numpy(), arrays[f"train_{mode}"])
    assert np.array_equal(test.images.reshape(CIFAR_TEST, -1).numpy(), arrays["test"])


def test_cifar100_label_mode_checked(cifar100_dir: Path) -> None:
    with pytest.raises(ValueError, match="label_mode"):
        cifar.load_cifar100(cifar100_dir, label_mode="medium")


def test_cifar_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Hint:") as e:
        cifar.load_cifar10(tmp_path / "absent")
    assert str(tmp_path / "absent") in str(e.value) and "data_batch_1" in str(e.value)
    with pytest.raises(FileNotFoundError, match="Hint:"):
        cifar.load_cifar100(tmp_path)


def test_cifar_truncated_batch(cifar10_dir: Path) -> None:
    path = cifar10_dir / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ValueError, match="data_batch_3"):
        cifar.load_cifar10(cifar10_dir)


def test_cifar_wrong_shape(cifar100_dir: Path) -> None:
    with open(cifar100_dir / "test", "wb") as f:
        pickle.dump({"data": np.zeros((2, 100), np.uint8), "fine_labels": [0, 1]}, f, protocol=4)
    with pytest.raises(ValueError, match=r"test: 'data' must be"):
        cifar.load_cifar100(cifar100_dir)


# A hand-made protocol-0 pickle: GLOBAL os.getcwd, empty args, REDUCE. It calls os.getcwd
# (harmless) if the unpickler resolves the global, so an allow-all find_class loads it fine.
_CALLS_GETCWD = b"cos\ngetcwd\n(tR."


@pytest.mark.parametrize(
    "payload",
    [
        _CALLS_GETCWD,
        pickle.dumps(os.system, protocol=2),
        pickle.dumps({"data": np.frombuffer}, protocol=4),
        pickle.dumps(io.BytesIO, protocol=0),
    ],
    ids=["crafted-GLOBAL-REDUCE", "os.system", "numpy.frombuffer", "io.BytesIO"],
)
def test_restricted_unpickler_refuses_other_globals(payload: bytes) -> None:
    with pytest.raises(pickle.UnpicklingError, match="refusing global"):
        cifar._RestrictedUnpickler(io.BytesIO(payload), encoding="bytes").load()
    assert pickle.loads(payload) is not None  # the payloads are valid pickles


def test_cifar_batch_with_foreign_global_is_refused(cifar10_dir: Path) -> None:
    (cifar10_dir / "cifar-10-batches-py" / "test_batch").write_bytes(_CALLS_GETCWD)
    with pytest.raises(ValueError, match=r"test_batch: refusing global os\.getcwd"):
        cifar.load_cifar10(cifar10_dir)


def test_restricted_unpickler_allows_only_numpy_arrays() -> None:
    u = cifar._RestrictedUnpickler(io.BytesIO(b""))
    reconstruct = u.find_class("numpy._core.multiarray", "_reconstruct")
    assert u.find_class("numpy.core.multiarray", "_reconstruct") is reconstruct
    assert u.find_class("numpy", "ndarray") is np.ndarray and u.find_class("numpy", "dtype") is np.dtype
    for module, name in [("builtins", "eval"), ("numpy", "load"), ("numpy.core.multiarray", "scalar")]:
        with pytest.raises(pickle.UnpicklingError):
            u.find_class(module, name)
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = cifar._RestrictedUnpickler(
        io.BytesIO(pickle.dumps({b"a": arr}, protocol=4)), encoding="bytes"
    ).load()
    assert np.array_equal(out[b"a"], arr)


# --- Tiny-ImageNet -------------------------------------------------------------------------------


def test_tiny_imagenet(tiny_dir: Path) -> None:
    info, train, test = tiny_imagenet.load(tiny_dir.parent)
    _check(train, 3 * TINY_TRAIN_PER_CLASS, (3, 64, 64))
    _check(test, len(TINY_VAL), (3, 64, 64))
    assert info.classes == ("goldfish", "European fire salamander", TINY_WNIDS[2])
    assert train.labels.tolist() == [k for k in range(3) for _ in range(TINY_TRAIN_PER_CLASS)]
    assert test.labels.tolist() == [k for _, k in TINY_VAL]
    grey = train.images[0]  # written as a greyscale JPEG: decoded to three equal planes
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert len(info.mean) == 3 and all(0.3 < m < 0.7 for m in info.mean)  # uniform noise
    assert info.name == "tiny-imagenet" and info.hflip


def test_tiny_imagenet_resizes_and_falls_back_to_wnids(tiny_dir: Path) -> None:
    (tiny_dir / "words.txt").unlink()
    info, train, test = tiny_imagenet.load(tiny_dir, image_size=32)
    assert info.classes == TINY_WNIDS and info.image_size == 32
    _check(train, 3 * TINY_TRAIN_PER_CLASS, (3, 32, 32))
    _check(test, len(TINY_VAL), (3, 32, 32))


def test_tiny_imagenet_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Hint:") as e:
        tiny_imagenet.load(tmp_path)
    assert str(tmp_path) in str(e.value) and "wnids.txt" in str(e.value)


def test_tiny_imagenet_bad_annotations(tiny_dir: Path) -> None:
    (tiny_dir / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match=r"val_annotations\.txt"):
        tiny_imagenet.load(tiny_dir)


def test_tiny_imagenet_corrupt_jpeg(tiny_dir: Path) -> None:
    path = tiny_dir / "val" / "images" / "val_2.JPEG"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"val_2\.JPEG"):
        tiny_imagenet.load(tiny_dir)


# --- image folder --------------------------------------------------------------------------------


def test_folder_single_dir_split(tmp_path: Path) -> None:
    arrays = write_image_folder(tmp_path)
    info, train, test = folder.load(tmp_path, image_size=8, test_fraction=0.4, seed=1)
    n = len(FOLDER_CLASSES) * FOLDER_PER_CLASS
    n_test = len(FOLDER_CLASSES) * round(FOLDER_PER_CLASS * 0.4)  # stratified per class
    _check(train, n - n_test, (3, 8, 8))
    _check(test, n_test, (3, 8, 8))
    assert info.classes == FOLDER_CLASSES and info.name == "folder" and info.hflip
    assert not _rows(train) & _rows(test)
    assert torch.bincount(test.labels).tolist() == [2, 2, 2]
    # Lossless files come back exactly (the .JPG is lossy).
    lossless = {
        np.ascontiguousarray(a.transpose(2, 0, 1)).tobytes() + bytes([k])
        for k, c in enumerate(FOLDER_CLASSES)
        for i, a in enumerate(arrays[c])
        if i != 1
    }
    assert lossless <= _rows(train) | _rows(test)
    _, train2, test2 = folder.load(tmp_path, image_size=8, test_fraction=0.4, seed=1)
    assert torch.equal(train.images, train2.images) and torch.equal(test.labels, test2.labels)
    _, _, test3 = folder.load(tmp_path, image_size=8, test_fraction=0.4, seed=2)
    assert _rows(test3) != _rows(test)


def test_folder_train_test_dirs_grey_and_resize(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "train", seed=0)
    write_image_folder(tmp_path / "test", seed=1)
    shutil.rmtree(tmp_path / "test" / "bee")  # a class with no test images is fine
    info, train, test = folder.load(tmp_path, image_size=4, channels=1)
    _check(train, len(FOLDER_CLASSES) * FOLDER_PER_CLASS, (1, 4, 4))
    _check(test, 2 * FOLDER_PER_CLASS, (1, 4, 4))
    assert test.labels.unique().tolist() == [0, 2]
    assert info.channels == 1 and len(info.mean) == 1 and info.image_size == 4


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Hint:"):
        folder.load(None)
    with pytest.raises(FileNotFoundError, match="Hint:") as e:
        folder.load(tmp_path / "absent")
    assert str(tmp_path / "absent") in str(e.value)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    (tmp_path / "empty" / "cls" / "readme.txt").write_text("no images")
    with pytest.raises(FileNotFoundError, match="no class folders"):
        folder.load(tmp_path / "empty")
    bad = tmp_path / "bad" / "cls"
    bad.mkdir(parents=True)
    (bad / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"broken\.png"):
        folder.load(tmp_path / "bad")


def test_folder_accepts_webp(tmp_path: Path) -> None:
    d = tmp_path / "x"
    d.mkdir()
    Image.new("RGB", (5, 5), (10, 200, 30)).save(d / "a.WEBP", lossless=True)
    _, train, test = folder.load(tmp_path, image_size=5, test_fraction=0.0)
    assert len(train) == 1 and len(test) == 0
    assert train.images[0, :, 0, 0].tolist() == [10, 200, 30]


# --- load_dataset: val carved from train ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fixture", "n_train_files"),
    [
        ("fashion-mnist", "fashion_dir", FASHION_TRAIN),
        ("cifar10", "cifar10_dir", 5 * CIFAR_PER_BATCH),
        ("cifar100", "cifar100_dir", CIFAR100_TRAIN),
        ("tiny-imagenet", "tiny_dir", 3 * TINY_TRAIN_PER_CLASS),
        ("folder", "folder_dir", len(FOLDER_CLASSES) * FOLDER_PER_CLASS * 4 // 5),
    ],
)
def test_load_dataset_carves_val_from_train(
    name: str, fixture: str, n_train_files: int, request: pytest.FixtureRequest
) -> None:
    data_dir = request.getfixturevalue(fixture)
    splits = load_dataset(name, data_dir, val_fraction=0.25, seed=3)
    assert splits.info.name == name
    assert len(splits.train) + len(splits.val) == n_train_files
    assert len(splits.val) == round(n_train_files * 0.25) > 0
    train, val, test = _rows(splits.train), _rows(splits.val), _rows(splits.test)
    assert len(train) == len(splits.train) and len(val) == len(splits.val)  # fixture images are distinct
    assert not train & val and not (train | val) & test
    again = load_dataset(name, data_dir, val_fraction=0.25, seed=3)
    assert torch.equal(again.val.images, splits.val.images) and torch.equal(
        again.train.labels, splits.train.labels
    )
    other = load_dataset(name, data_dir, val_fraction=0.25, seed=4)
    assert _rows(other.train) | _rows(other.val) == train | val


def test_a_dataset_written_as_a_folder_reads_back_the_same_with_a_slash_in_a_label(
    fashion_dir, tmp_path
) -> None:
    splits = load_dataset("fashion-mnist", fashion_dir)
    assert "T-shirt/top" in splits.info.classes
    out = tmp_path / "as-folder"
    folder.main(
        ["--data", "fashion-mnist", "--data-dir", str(fashion_dir), "--out", str(out), "--limit", "5"]
    )
    assert (out / "train" / "T-shirt_top").is_dir() and folder.folder_name("T-shirt/top") == "T-shirt_top"
    again = load_dataset(
        "folder",
        out,
        image_size=28,
        channels=1,
        classes=list(splits.info.classes),
        mean=list(splits.info.mean),
        std=list(splits.info.std),
    )
    for name in ("train", "val", "test"):
        want, got = getattr(splits, name).head(5), getattr(again, name)
        assert len(got) == len(want) > 0
        order = sorted(range(len(want)), key=lambda i: (int(want.labels[i]), i))  # read back class by class
        assert got.labels.tolist() == [int(want.labels[i]) for i in order]
        assert torch.equal(got.images, want.images[order])
    (out / "train" / "T-shirt").mkdir()
    with pytest.raises(ValueError, match=r'T-shirt.*"/" in a label written as "_"'):
        load_dataset(
            "folder", out, image_size=28, channels=1, classes=list(splits.info.classes), mean=[0.5], std=[0.5]
        )


def test_folder_applies_a_processors_resize_and_center_crop(tmp_path: Path) -> None:
    arr = np.random.default_rng(3).integers(0, 256, (30, 30, 3), dtype=np.uint8)
    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.fromarray(arr).save(tmp_path / split / "a" / "0.png")
    _, train, _ = folder.load(
        tmp_path, image_size=16, resample="bicubic", resize=[20, 20], center_crop=[16, 16]
    )
    big = np.asarray(Image.fromarray(arr).resize((20, 20), Image.Resampling.BICUBIC))
    assert train.images[0].permute(1, 2, 0).numpy().tolist() == big[2:18, 2:18].tolist()
