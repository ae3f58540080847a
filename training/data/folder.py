"""Any image-folder dataset: one sub-folder per class, its name the class name.

Layouts, in the order they are looked for:

- ``data_dir/train/<class>/``, ``data_dir/val/<class>/`` and ``data_dir/test/<class>/``: the three
  splits as given (``val/`` is the validation split; none is carved);
- ``data_dir/train/<class>/`` and ``data_dir/test/<class>/``: the validation split is carved from
  train as for every dataset (``training.data.load_dataset``);
- ``data_dir/<class>/`` holds everything and a seeded, per-class stratified test split of
  ``test_fraction`` is carved from it.

Images are decoded with Pillow, converted to grey ("L") or RGB and resized to ``image_size`` x
``image_size`` with ``resample`` (bilinear unless told). The classes are the folder names, sorted;
given ``classes`` (a model brought in from elsewhere, whose labels are fixed), they are those, in
that order, and every folder must be one of them. A label holding "/" (which no folder name can
hold, e.g. Fashion-MNIST's "T-shirt/top") has its folder named with "_" in its place
(``folder_name``). ``mean``/``std`` given are used as they are (the model's own normalisation),
else measured on the training images.

``python -m skipvit.training.data.folder --data fashion-mnist --out DIR`` writes a dataset's three
splits in this layout (PNG), e.g. to try a model brought in from elsewhere on known data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from skipvit.model.preprocess import fit_image, pillow_filter
from skipvit.training.data.base import ArrayData, DatasetInfo, channel_stats

EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
_HINT = "Hint: pass --data-dir to a directory with one sub-folder of images per class (or train/ and test/ each laid out so)."


def read_image(
    path: Path, mode: str, size: int, resample: str = "bilinear", crop: dict | None = None
) -> np.ndarray:
    """Decode one image to a uint8 (C, size, size) array, resized with ``resample`` where it is
    another size (``crop``: the processor's ``resize`` and ``center_crop``, applied first, as the
    server does: ``model.preprocess.fit_image``); a broken file raises ValueError."""
    pillow_filter(resample)
    try:
        with Image.open(path) as im:
            im = fit_image(im.convert(mode), size, resample, **(crop or {}))
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{path}: cannot decode image ({e})") from e
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def stack_images(
    paths: list[Path], mode: str, size: int, resample: str = "bilinear", crop: dict | None = None
) -> torch.Tensor:
    """Decode ``paths`` into one uint8 (N, C, size, size) tensor."""
    out = np.empty((len(paths), 1 if mode == "L" else 3, size, size), dtype=np.uint8)
    for i, p in enumerate(paths):
        out[i] = read_image(p, mode, size, resample, crop)
    return torch.from_numpy(out)


def train_stats(
    images: torch.Tensor, max_images: int = 10_000
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``channel_stats`` on an evenly strided subset of at most ``max_images`` (bounds the float copy)."""
    step = max(1, -(-len(images) // max_images))
    return channel_stats(images[::step])


def folder_name(label: str) -> str:
    """The folder that holds class ``label``'s images: the label, "/" written as "_"."""
    return label.replace("/", "_")


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)


def _read_split(
    root: Path, classes: list[str], mode: str, size: int, resample: str, crop: dict | None = None
) -> ArrayData:
    paths, labels = [], []
    for k, name in enumerate(classes):
        d = root / folder_name(name)
        files = _image_files(d) if d.is_dir() else []
        paths += files
        labels += [k] * len(files)
    return ArrayData(stack_images(paths, mode, size, resample, crop), torch.tensor(labels, dtype=torch.int64))


def _check_folders(root: Path, classes: list[str], whose: str) -> None:
    """Every class folder under ``root`` names one of ``classes``."""
    extra = sorted({d.name for d in _class_dirs(root)} - {folder_name(c) for c in classes})
    if extra:
        raise ValueError(
            f"{root}: folders {', '.join(extra)} are not classes of {whose} ({', '.join(classes)}); "
            'Hint: name each class folder after one of those classes ("/" in a label written as "_"), '
            "or remove it"
        )


def _carve_test(
    full: ArrayData, n_classes: int, test_fraction: float, seed: int
) -> tuple[ArrayData, ArrayData]:
    """A seeded, per-class stratified test split of ``test_fraction``: (train, test)."""
    g = torch.Generator().manual_seed(seed)
    test_idx = []
    for k in range(n_classes):
        idx = torch.nonzero(full.labels == k).flatten()
        n_test = round(len(idx) * test_fraction)
        test_idx.append(idx[torch.randperm(len(idx), generator=g)[:n_test]])
    is_test = torch.zeros(len(full), dtype=torch.bool)
    is_test[torch.cat(test_idx)] = True
    return full.subset(torch.nonzero(~is_test).flatten()), full.subset(torch.nonzero(is_test).flatten())


def load(
    data_dir: str | Path | None,
    image_size: int = 32,
    channels: int = 3,
    test_fraction: float = 0.2,
    seed: int = 0,
    *,
    classes: list[str] | None = None,
    resample: str = "bilinear",
    mean: list[float] | None = None,
    std: list[float] | None = None,
    hflip: bool = True,
    resize: list[int] | None = None,
    center_crop: list[int] | None = None,
) -> tuple[DatasetInfo, ArrayData, ArrayData] | tuple[DatasetInfo, ArrayData, ArrayData, ArrayData]:
    """(info, train, test), or (info, train, test, val) where ``data_dir/val/`` gives the
    validation split. ``resize`` + ``center_crop`` (H, W each): a processor that crops (an
    imported model's), applied before the resize to ``image_size``."""
    if data_dir is None:
        raise ValueError(f"the folder dataset needs a data directory. {_HINT}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError("test_fraction must lie in [0, 1)")
    if (mean is None) != (std is None):
        raise ValueError("mean and std come together (or neither)")
    pillow_filter(resample)
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root} is not a directory. {_HINT}")
    mode = "L" if channels == 1 else "RGB"
    crop = (
        {"resize": tuple(resize) if resize else None, "center_crop": tuple(center_crop)}
        if center_crop
        else None
    )
    split_dirs = (root / "train").is_dir() and (root / "test").is_dir()
    train_root = root / "train" if split_dirs else root
    given = classes is not None
    if given:
        classes = list(classes)
        _check_folders(train_root, classes, "the model")
    else:
        classes = [d.name for d in _class_dirs(train_root)]
    dirs = [train_root / folder_name(c) for c in classes]
    if not classes or not any(d.is_dir() and _image_files(d) for d in dirs):
        raise FileNotFoundError(
            f"no class folders with images ({', '.join(sorted(EXTENSIONS))}) in {train_root}. {_HINT}"
        )
    val = None
    if split_dirs:
        extra = sorted({d.name for d in _class_dirs(root / "test")} - {folder_name(c) for c in classes})
        if extra:
            raise ValueError(f"{root / 'test'}: classes {', '.join(extra)} have no folder in {train_root}")
        train = _read_split(train_root, classes, mode, image_size, resample, crop)
        test = _read_split(root / "test", classes, mode, image_size, resample, crop)
        if (root / "val").is_dir():
            _check_folders(root / "val", classes, "train/")
            val = _read_split(root / "val", classes, mode, image_size, resample, crop)
    else:
        full = _read_split(root, classes, mode, image_size, resample, crop)
        train, test = _carve_test(full, len(classes), test_fraction, seed)
    if mean is None or std is None:
        mean, std = train_stats(train.images)
    info = DatasetInfo("folder", tuple(classes), image_size, channels, tuple(mean), tuple(std), hflip=hflip)
    return (info, train, test) if val is None else (info, train, test, val)


def write_splits(splits, out: str | Path, limit: int | None = None) -> dict[str, int]:
    """``splits`` (``DataSplits``) as ``out/{train,val,test}/<class folder>/<index>.png``, the first
    ``limit`` images of each split where given; returns the images written per split."""
    root = Path(out)
    written = {}
    for name in ("train", "val", "test"):
        data = getattr(splits, name)
        n = len(data) if limit is None else min(limit, len(data))
        for label in splits.info.classes:
            (root / name / folder_name(label)).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = data.images[i].numpy()  # (C, H, W) uint8
            img = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
            img.save(root / name / folder_name(splits.info.classes[int(data.labels[i])]) / f"{i}.png")
        written[name] = n
    return written


def main(argv: list[str] | None = None) -> None:
    import argparse

    from skipvit.training.data import DATASETS, load_dataset

    p = argparse.ArgumentParser(
        prog="python -m skipvit.training.data.folder",
        description="write a dataset's train/val/test splits as an image folder (PNG, one folder per class)",
    )
    p.add_argument("--data", required=True, choices=[d for d in DATASETS if d != "folder"])
    p.add_argument("--data-dir", default=None, help="where the dataset lies (default: its own place)")
    p.add_argument("--out", required=True)
    p.add_argument("--limit", type=int, default=None, help="at most this many images per split")
    args = p.parse_args(argv)
    written = write_splits(load_dataset(args.data, args.data_dir), args.out, args.limit)
    print(f"wrote {', '.join(f'{n} {s}' for s, n in written.items())} images to {args.out}")


if __name__ == "__main__":
    main()
