"""Tiny-ImageNet-200 from its standard extracted ``tiny-imagenet-200/`` layout.

Class order is that of ``wnids.txt``; readable names come from ``words.txt`` when present (its
first synonym), else the wnid. The official test labels are not public, so the labelled
``val/`` set (50 images per class, labels in ``val/val_annotations.txt``) serves as the test
split here; the validation split ``load_dataset`` returns is carved from ``train/`` as usual.
"""

from __future__ import annotations

from pathlib import Path

import torch

from skipvit.training.data.base import ArrayData, DatasetInfo
from skipvit.training.data.folder import stack_images, train_stats

DEFAULT_DIR = Path("/usr/share/datasets/tiny-imagenet-200")
_REQUIRED = ("wnids.txt", "train", "val/images", "val/val_annotations.txt")


def _read_lines(path: Path) -> list[str]:
    try:
        return [ln.rstrip("\r\n") for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from e


def _class_names(root: Path, wnids: list[str]) -> tuple[str, ...]:
    words: dict[str, str] = {}
    if (root / "words.txt").is_file():
        for ln in _read_lines(root / "words.txt"):
            wnid, _, text = ln.partition("\t")
            words[wnid] = text.split(",")[0].strip()
    return tuple(words.get(w) or w for w in wnids)


def _train(root: Path, wnids: list[str], size: int) -> ArrayData:
    paths, labels = [], []
    for k, wnid in enumerate(wnids):
        d = root / "train" / wnid / "images"
        if not d.is_dir():
            raise FileNotFoundError(f"Tiny-ImageNet: {d} is missing (class {wnid} of wnids.txt)")
        files = sorted(p for p in d.iterdir() if p.suffix.lower() == ".jpeg")
        paths += files
        labels += [k] * len(files)
    return ArrayData(stack_images(paths, "RGB", size), torch.tensor(labels, dtype=torch.int64))


def _val(root: Path, wnids: list[str], size: int) -> ArrayData:
    ann = root / "val" / "val_annotations.txt"
    index = {w: k for k, w in enumerate(wnids)}
    paths, labels = [], []
    for i, ln in enumerate(_read_lines(ann), 1):
        fields = ln.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise ValueError(
                f"{ann}:{i}: expected 'filename<TAB>wnid<TAB>bbox...' with a wnid from wnids.txt"
            )
        paths.append(root / "val" / "images" / fields[0])
        labels.append(index[fields[1]])
    return ArrayData(stack_images(paths, "RGB", size), torch.tensor(labels, dtype=torch.int64))


def load(
    data_dir: str | Path | None = None, image_size: int = 64
) -> tuple[DatasetInfo, ArrayData, ArrayData]:
    base = Path(data_dir) if data_dir else DEFAULT_DIR
    root = base / "tiny-imagenet-200" if (base / "tiny-imagenet-200").is_dir() else base
    missing = [n for n in _REQUIRED if not (root / n).exists()]
    if missing:
        raise FileNotFoundError(
            f"Tiny-ImageNet not found: {root} lacks {', '.join(missing)}. "
            f"Hint: extract tiny-imagenet-200.zip into {DEFAULT_DIR.parent}, "
            "or pass --data-dir to the tiny-imagenet-200/ folder."
        )
    wnids = [ln.strip() for ln in _read_lines(root / "wnids.txt")]
    if not wnids or len(set(wnids)) != len(wnids):
        raise ValueError(f"{root / 'wnids.txt'}: expected one distinct wnid per line")
    train = _train(root, wnids, image_size)
    test = _val(root, wnids, image_size)
    mean, std = train_stats(train.images)
    info = DatasetInfo("tiny-imagenet", _class_names(root, wnids), image_size, 3, mean, std, hflip=True)
    return info, train, test
