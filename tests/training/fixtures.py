"""Writers of tiny datasets in each loader's real on-disk format, inside ``tmp_path``.

Every image is random noise from a seeded generator, so images are distinct and a split's
contents can be compared by their bytes.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_TRAIN, FASHION_TEST = 20, 6
CIFAR_PER_BATCH, CIFAR_TEST = 4, 5
CIFAR100_TRAIN = 12
TINY_WNIDS = ("n01443537", "n01629819", "n01641577")
TINY_TRAIN_PER_CLASS = 3
TINY_VAL = (("val_0.JPEG", 2), ("val_1.JPEG", 0), ("val_2.JPEG", 1), ("val_3.JPEG", 0))
FOLDER_CLASSES = ("ant", "bee", "cat")
FOLDER_PER_CLASS = 5


def write_idx(path: Path, array: np.ndarray, *, truncate: int = 0) -> None:
    """Gzipped IDX: magic 0x00 0x00 0x08 ndim, big-endian dims, then the bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    body = array.astype(np.uint8).tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + body[: len(body) - truncate])


def write_fashion_mnist(root: Path, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n, prefix in (("train", FASHION_TRAIN, "train"), ("test", FASHION_TEST, "t10k")):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    return arrays


class Py2StylePickler(pickle._Pickler):
    """Writes str and bytes as Python 2 ``str`` (BINSTRING), as the original CIFAR files do."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: str | bytes) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        n = len(raw)
        op = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(op + raw)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def dump_py2(obj: object, path: Path) -> None:
    """A protocol-2 pickle as numpy 1.x on Python 2 wrote it (``numpy.core.multiarray`` path)."""
    buf = io.BytesIO()
    Py2StylePickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))


def write_cifar10(parent: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """``parent/cifar-10-batches-py/`` in the Python 2 pickle format (bytes keys once loaded)."""
    rng = np.random.default_rng(seed)
    root = parent / "cifar-10-batches-py"
    root.mkdir(parents=True)
    arrays = {}
    for name, n in [*((f"data_batch_{i}", CIFAR_PER_BATCH) for i in range(1, 6)), ("test_batch", CIFAR_TEST)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        dump_py2(
            {"batch_label": name, "labels": labels, "data": data, "filenames": ["x.png"] * n}, root / name
        )
        arrays[name] = data
        arrays[name + "_labels"] = np.array(labels)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    dump_py2(
        {"num_cases_per_batch": CIFAR_PER_BATCH, "label_names": names, "num_vis": 3072}, root / "batches.meta"
    )
    return arrays


def write_cifar100(root: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """``root`` itself as ``cifar-100-python/``, written by Python 3 ``pickle.dump`` (str keys)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    arrays = {}
    for name, n in (("train", CIFAR100_TRAIN), ("test", CIFAR_TEST)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, n).tolist()
        coarse = [f // 5 for f in fine]
        with open(root / name, "wb") as f:
            pickle.dump({"data": data, "fine_labels": fine, "coarse_labels": coarse}, f, protocol=4)
        arrays[name], arrays[name + "_fine"], arrays[name + "_coarse"] = (
            data,
            np.array(fine),
            np.array(coarse),
        )
    meta = {
        "fine_label_names": [f"fine{i}" for i in range(100)],
        "coarse_label_names": [f"coarse{i}" for i in range(20)],
    }
    with open(root / "meta", "wb") as f:
        pickle.dump(meta, f, protocol=4)
    return arrays


def _noise_image(rng: np.random.Generator, size: int, mode: str) -> Image.Image:
    shape = (size, size) if mode == "L" else (size, size, 3)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)


def write_tiny_imagenet(parent: Path, seed: int = 0) -> Path:
    """``parent/tiny-imagenet-200/`` with JPEGs; one training image is greyscale, as some real ones are."""
    rng = np.random.default_rng(seed)
    root = parent / "tiny-imagenet-200"
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(TINY_WNIDS) + "\n")
    # words.txt covers two of the three wnids, plus one not in the dataset.
    (root / "words.txt").write_text(
        "n01443537\tgoldfish, Carassius auratus\nn01629819\tEuropean fire salamander, Salamandra salamandra\n"
        "n00000001\tunused\n"
    )
    for k, wnid in enumerate(TINY_WNIDS):
        d = root / "train" / wnid / "images"
        d.mkdir(parents=True)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(TINY_TRAIN_PER_CLASS):
            mode = "L" if (k, i) == (0, 0) else "RGB"
            _noise_image(rng, 64, mode).save(d / f"{wnid}_{i}.JPEG", quality=95)
    (root / "val" / "images").mkdir(parents=True)
    lines = []
    for fname, k in TINY_VAL:
        _noise_image(rng, 64, "RGB").save(root / "val" / "images" / fname, quality=95)
        lines.append(f"{fname}\t{TINY_WNIDS[k]}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (root / "test" / "images").mkdir(parents=True)  # unlabelled, ignored
    return root


def write_image_folder(root: Path, seed: int = 0, size: int = 8) -> dict[str, list[np.ndarray]]:
    """``root/<class>/`` with PNG, upper-case .JPG and .bmp files (lossless ones kept for comparison)."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, list[np.ndarray]] = {}
    for c in FOLDER_CLASSES:
        d = root / c
        d.mkdir(parents=True)
        arrays[c] = []
        for i in range(FOLDER_PER_CLASS):
            im = _noise_image(rng, size, "RGB")
            ext = (".png", ".JPG", ".bmp", ".png", ".PNG")[i]
            im.save(d / f"img{i}{ext}", format={".png": "PNG", ".jpg": "JPEG", ".bmp": "BMP"}[ext.lower()])
            arrays[c].append(np.asarray(im))
        (d / "notes.txt").write_text("not an image")
    return arrays
