"""Fashion-MNIST from its IDX ``.gz`` files (Debian package ``dataset-fashion-mnist``)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from skipvit.training.data.base import ArrayData, DatasetInfo

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# Training-set statistics, in [0, 1] units.
MEAN, STD = (0.2860,), (0.3530,)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic, dims, then big-endian unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile) as e:
        raise ValueError(f"{path}: unreadable ({e}); the file may be truncated") from None
    if len(data) < 4 or len(data) < 4 + 4 * data[3]:
        raise ValueError(f"{path}: too short for an IDX file")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(
            f"{path}: expected {int(np.prod(dims))} bytes of data, found {body.size} (truncated?)"
        )
    return body.reshape(dims)


def _split(root: Path, split: str) -> ArrayData:
    img_name, lbl_name = FILES[split]
    images = read_idx(root / img_name)  # (N, 28, 28)
    labels = read_idx(root / lbl_name)  # (N,)
    return ArrayData(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


def load(data_dir: str | Path | None = None) -> tuple[DatasetInfo, ArrayData, ArrayData]:
    root = Path(data_dir) if data_dir else DEFAULT_DIR
    missing = [n for pair in FILES.values() for n in pair if not (root / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found: {root} lacks {', '.join(missing)}. "
            f"Hint: `apt-get install dataset-fashion-mnist` puts it in {DEFAULT_DIR}, "
            "or pass --data-dir to a directory holding the four IDX .gz files."
        )
    info = DatasetInfo("fashion-mnist", CLASSES, 28, 1, MEAN, STD, hflip=True)
    return info, _split(root, "train"), _split(root, "test")
