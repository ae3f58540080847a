"""A local ``save_pretrained`` directory, read without transformers, network or pickle.

What is read: ``config.json`` (the architecture and the labels), ``model.safetensors`` or the
shards a ``model.safetensors.index.json`` lists (the weights), ``preprocessor_config.json`` (how an
image becomes the model's input). A directory with only a pickled checkpoint
(``pytorch_model.bin``) is refused with the command that converts it; nothing here ever unpickles.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

CONFIG = "config.json"
PREPROCESSOR = "preprocessor_config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")

CONVERT_HINT = (
    "Hint: convert it once with transformers, on a machine where loading the pickle is safe "
    "(only for a checkpoint you trust: loading a .bin runs code from it):\n"
    '  python -c "from transformers import AutoModelForImageClassification as M; '
    "M.from_pretrained('{dir}').save_pretrained('{dir}', safe_serialization=True)\""
)


class SourceError(ValueError):
    """A directory this project cannot import; the message says what is supported."""


@dataclass
class Source:
    root: Path
    config: dict[str, Any]
    preprocessor: dict[str, Any]
    weight_files: list[Path]

    def load_tensors(self) -> dict[str, Tensor]:
        """Every tensor of the checkpoint, in float32 (a half-precision checkpoint is widened)."""
        tensors: dict[str, Tensor] = {}
        for path in self.weight_files:
            try:
                tensors.update(load_file(str(path)))
            except (SafetensorError, OSError) as e:
                raise SourceError(f"{path} is not a readable safetensors file ({e})") from None
        return {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SourceError(f"{path} is not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise SourceError(f"{path} does not hold a JSON object")
    return data


def weight_files(root: Path) -> list[Path]:
    if (root / WEIGHTS).is_file():
        return [root / WEIGHTS]
    if (root / WEIGHTS_INDEX).is_file():
        index = read_json(root / WEIGHTS_INDEX)
        shards = sorted(set(index.get("weight_map", {}).values()))
        paths = [root / s for s in shards]
        if not paths or not all(p.is_file() and p.parent == root for p in paths):
            raise SourceError(f"{root / WEIGHTS_INDEX} names shards that are not files in {root}")
        return paths
    pickled = [name for name in PICKLED if (root / name).is_file()]
    if pickled:
        raise SourceError(
            f"{root} holds {pickled[0]}, not safetensors; checkpoints that would have to be "
            "unpickled are refused. " + CONVERT_HINT.format(dir=root)
        )
    raise SourceError(
        f"{root} holds no {WEIGHTS}; Hint: point at the directory that model.save_pretrained(DIR) wrote"
    )


def read_source(root: str | Path) -> Source:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root} is not a directory; Hint: pass the directory that save_pretrained wrote "
            "(a Hub model name is not fetched: nothing is downloaded)"
        )
    if not (root / CONFIG).is_file():
        raise SourceError(f"{root} holds no {CONFIG}; Hint: point at the directory save_pretrained wrote")
    config = read_json(root / CONFIG)
    files = weight_files(root)
    if not (root / PREPROCESSOR).is_file():
        raise SourceError(
            f"{root} holds no {PREPROCESSOR}, so how images become the model's input is unknown; "
            "Hint: save the model's image processor beside it, e.g. "
            "AutoImageProcessor.from_pretrained(NAME).save_pretrained(DIR)"
        )
    return Source(root, config, read_json(root / PREPROCESSOR), files)
