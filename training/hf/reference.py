"""transformers as the reference: the one module of skipvit that imports it (for ``--check`` and
the tests), always offline and from local files.

The repository keeps this project's row-compaction package in a top-level folder named
``kernels``, the name of a package transformers imports. Run from a checkout (``python -m
skipvit``, pytest), the checkout is on ``sys.path`` and that folder would shadow it; so
transformers is imported with such entries taken off ``sys.path`` for the moment of the import.
Once imported, ``sys.modules`` holds the right ``kernels`` and nothing else changes.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from skipvit.model.bundle import Bundle
from skipvit.model.preprocess import fit_image
from skipvit.training.data.augment import to_float
from skipvit.training.hf.config import architecture

INSTALL_HINT = "Hint: pip install 'skipvit[hf]' (transformers), or leave out --check"


def import_transformers():
    """``transformers``, imported offline, with this checkout's ``kernels`` folder out of the way."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if "transformers" in sys.modules:
        return sys.modules["transformers"]
    import skipvit.kernels

    ours = Path(skipvit.kernels.__file__).resolve().parent
    loaded = sys.modules.get("kernels")
    if loaded is not None and Path(getattr(loaded, "__file__", None) or "/").resolve().parent == ours:
        raise RuntimeError(
            f"`kernels` was imported from {ours} (this repository's folder, not the package "
            "transformers needs); Hint: import it as skipvit.kernels"
        )
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if (Path(p or os.getcwd()) / "kernels").resolve() != ours]
    try:
        with contextlib.suppress(ImportError):  # a transformers that does not need it
            importlib.import_module("kernels")
        try:
            transformers = importlib.import_module("transformers")
        except ImportError:
            raise ImportError(f"transformers is not installed; {INSTALL_HINT}") from None
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        # The classes are imported lazily: import them now, while the path is clear.
        for name in (
            "ViTForImageClassification",
            "DeiTForImageClassificationWithTeacher",
            "AutoImageProcessor",
        ):
            getattr(transformers, name)
    finally:
        sys.path[:] = saved
    return transformers


def load_reference(hf_dir: str | Path, attention: str = "eager"):
    """The transformers model in ``hf_dir``, in eval mode, with ``attention`` as its attention
    implementation: the plain ("eager") one for the parity checks, "sdpa" for timing."""
    transformers = import_transformers()
    name, _, _ = architecture(_config(hf_dir))
    cls = getattr(transformers, name)
    model = cls.from_pretrained(
        str(hf_dir), local_files_only=True, use_safetensors=True, attn_implementation=attention
    )
    return model.float().eval()


def _config(hf_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(hf_dir) / "config.json").read_text())


def pixel_inputs(bundle: Bundle, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random (float) model inputs and ``n`` random uint8 images of the bundle's layout."""
    g = torch.Generator().manual_seed(seed)
    cfg = bundle.architecture
    shape = (n, cfg.in_channels, cfg.image_size, cfg.image_size)
    return torch.randn(shape, generator=g), torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)


@torch.inference_mode()
def compare(bundle: Bundle, hf_dir: str | Path, n: int = 8, seed: int = 0, point: str = "static") -> dict:
    """The bundle's ``point`` against the transformers model in ``hf_dir``:

    - ``logits``: max |difference| of the logits on ``n`` random model inputs (the same tensor in);
    - ``images``: the same from ``n`` random uint8 images, each side preprocessing them its own way
      (the server's resize and crop, ``model.preprocess.fit_image``, and the bundle's mean/std; the
      directory's image processor), where the processor resizes to a fixed size (not keeping the
      aspect ratio); else None.
    """
    theirs = load_reference(hf_dir)
    ours = bundle.build_model(bundle.point(point).weights)
    x, images = pixel_inputs(bundle, n, seed)
    ref = theirs(pixel_values=x).logits
    got = ours(x).logits
    result = {
        "n": n,
        "logits_max_abs_diff": float((got - ref).abs().max()),
        "same_top1": float((got.argmax(1) == ref.argmax(1)).float().mean()),
        "images_max_abs_diff": None,
    }
    pre = bundle.preprocess
    size = bundle.architecture.image_size
    fixed = pre is None or pre.center_crop is not None or pre.resize in (None, (size, size))
    if fixed and bundle.architecture.in_channels in (1, 3):
        processor = import_transformers().AutoImageProcessor.from_pretrained(
            str(hf_dir), local_files_only=True
        )
        arrays = [img.numpy() for img in images]  # (C, H, W) uint8 each
        pixels = processor(
            images=arrays, return_tensors="pt", input_data_format="channels_first"
        ).pixel_values
        ds = bundle.dataset
        ref_img = theirs(pixel_values=pixels.float()).logits
        got_img = ours(to_float(fitted(bundle, images), ds["mean"], ds["std"])).logits
        result["images_max_abs_diff"] = float((got_img - ref_img).abs().max())
    return result


def fitted(bundle: Bundle, images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) images brought to the model's input size as the server and the folder
    dataset bring them (``model.preprocess.fit_image``, through Pillow)."""
    from PIL import Image

    from skipvit.training.data import bundle_input

    how = bundle_input(bundle)
    size = bundle.architecture.image_size
    out = []
    for img in images:
        arr = img.numpy()
        pil = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
        pil = fit_image(pil, size, how["resample"], **(how["crop"] or {}))
        got = torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy())
        out.append(got.unsqueeze(0) if got.dim() == 2 else got.permute(2, 0, 1))
    return torch.stack(out)


@torch.inference_mode()
def accuracy_check(
    bundle: Bundle, hf_dir: str | Path, data, point: str = "static", batch_size: int = 256
) -> dict:
    """The bundle's ``point`` and the transformers model in ``hf_dir`` on the same labelled images
    (``data``: ``ArrayData``, uint8), each preprocessing them its own way (the bundle's mean/std;
    the directory's image processor, run on the raw images): both accuracies and how often the two
    predictions agree."""
    theirs = load_reference(hf_dir)
    processor = import_transformers().AutoImageProcessor.from_pretrained(str(hf_dir), local_files_only=True)
    ours = bundle.build_model(bundle.point(point).weights)
    ours.eval()
    ds = bundle.dataset
    mine, ref = [], []
    for images, _ in data.batches(batch_size):
        pixels = processor(
            images=[img.numpy() for img in images], return_tensors="pt", input_data_format="channels_first"
        ).pixel_values
        ref.append(theirs(pixel_values=pixels.float()).logits.argmax(-1))
        mine.append(ours(to_float(images, ds["mean"], ds["std"])).logits.argmax(-1))
    got, want = torch.cat(mine), torch.cat(ref)
    return {
        "n": len(data),
        "accuracy_bundle": float((got == data.labels).float().mean()),
        "accuracy_transformers": float((want == data.labels).float().mean()),
        "same_prediction": float((got == want).float().mean()),
    }
