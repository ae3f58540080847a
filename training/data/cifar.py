"""CIFAR-10 and CIFAR-100 from their standard "python version" archives, extracted.

The batch files are Python pickles. The project loads no pickle of its own, and this external
format is read with ``_RestrictedUnpickler``, whose ``find_class`` resolves exactly four names:
numpy's ``_reconstruct`` (under its numpy 1.x path ``numpy.core.multiarray`` and its 2.x path
``numpy._core.multiarray``), ``numpy.ndarray`` and ``numpy.dtype``. Every other global raises
``pickle.UnpicklingError``. Why that is safe: a pickle can run code only by calling a callable,
and the only way to get one is ``find_class`` (GLOBAL / STACK_GLOBAL opcodes). With those four,
REDUCE and BUILD can only build a plain array of a given shape and dtype and fill in its bytes.
Nothing else can be imported or called. Everything else in the files is dicts, lists, ints and
bytes/str, which the unpickler builds without calling anything. Objects that are not plain arrays
or lists where arrays or lists are expected are then rejected with a ValueError.

The original files (Python 2, protocol 2) load as they are. A copy re-pickled by Python 3 loads
only with protocol 3 or 4: protocol 2 there wraps bytes in ``_codecs.encode`` and protocol 5
stores arrays through ``numpy._core.numeric._frombuffer``, both refused.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from skipvit.training.data.base import ArrayData, DatasetInfo

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

DEFAULT_DIR_10 = Path("/usr/share/datasets/cifar10")
DEFAULT_DIR_100 = Path("/usr/share/datasets/cifar100")
# Training-set channel statistics, in [0, 1] units.
MEAN_10, STD_10 = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
MEAN_100, STD_100 = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)

_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy's array reconstruction globals (see module docstring)."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing global {module}.{name}: CIFAR batches may reference only numpy arrays"
            ) from None


def read_batch(path: Path) -> dict[str, Any]:
    """Load one CIFAR pickle with the restricted unpickler; keys come back as ``str``."""
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, encoding="bytes").load()
    except OSError:
        raise
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: {e}") from e
    except Exception as e:  # a truncated or foreign pickle fails in many ways
        raise ValueError(f"{path}: not a readable CIFAR pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict, found {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _names(path: Path, key: str) -> tuple[str, ...]:
    meta = read_batch(path)
    names = meta.get(key)
    if not isinstance(names, list) or not names:
        raise ValueError(f"{path}: no {key!r} list")
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)


def _images_labels(paths: list[Path], label_key: str, num_classes: int) -> ArrayData:
    images, labels = [], []
    for path in paths:
        batch = read_batch(path)
        data, lbl = batch.get("data"), batch.get(label_key)
        if (
            not isinstance(data, np.ndarray)
            or data.dtype != np.uint8
            or data.ndim != 2
            or data.shape[1] != 3072
        ):
            raise ValueError(f"{path}: 'data' must be a uint8 (N, 3072) array")
        if not isinstance(lbl, list | np.ndarray) or len(lbl) != data.shape[0]:
            raise ValueError(f"{path}: {label_key!r} must list one label per image")
        try:
            lbl_arr = np.asarray(lbl, dtype=np.int64).reshape(-1)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {label_key!r} must hold integers ({e})") from e
        if lbl_arr.size and (lbl_arr.min() < 0 or lbl_arr.max() >= num_classes):
            raise ValueError(f"{path}: labels outside [0, {num_classes})")
        images.append(data.reshape(-1, 3, 32, 32))  # row-major R, G, B planes
        labels.append(lbl_arr)
    return ArrayData(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))


def _root(data_dir: str | Path | None, default: Path, folder: str, files: list[str], name: str) -> Path:
    base = Path(data_dir) if data_dir else default
    root = base / folder if (base / folder).is_dir() else base
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{name} not found: {root} lacks {', '.join(missing)}. "
            f"Hint: extract the python version of {name} ({folder}/) into {default}, "
            f"or pass --data-dir to {folder}/ or to its parent."
        )
    return root


def load_cifar10(data_dir: str | Path | None = None) -> tuple[DatasetInfo, ArrayData, ArrayData]:
    train_files = [f"data_batch_{i}" for i in range(1, 6)]
    root = _root(
        data_dir,
        DEFAULT_DIR_10,
        "cifar-10-batches-py",
        [*train_files, "test_batch", "batches.meta"],
        "CIFAR-10",
    )
    classes = _names(root / "batches.meta", "label_names")
    train = _images_labels([root / f for f in train_files], "labels", len(classes))
    test = _images_labels([root / "test_batch"], "labels", len(classes))
    return DatasetInfo("cifar10", classes, 32, 3, MEAN_10, STD_10, hflip=True), train, test


def load_cifar100(
    data_dir: str | Path | None = None, label_mode: str = "fine"
) -> tuple[DatasetInfo, ArrayData, ArrayData]:
    if label_mode not in ("fine", "coarse"):
        raise ValueError(f"label_mode must be 'fine' or 'coarse', got {label_mode!r}")
    root = _root(data_dir, DEFAULT_DIR_100, "cifar-100-python", ["train", "test", "meta"], "CIFAR-100")
    classes = _names(root / "meta", f"{label_mode}_label_names")
    key = f"{label_mode}_labels"
    train = _images_labels([root / "train"], key, len(classes))
    test = _images_labels([root / "test"], key, len(classes))
    return DatasetInfo("cifar100", classes, 32, 3, MEAN_100, STD_100, hflip=True), train, test
