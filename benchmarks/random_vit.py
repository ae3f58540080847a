"""A random-initialised `transformers` ViT of a standard size, saved as ``save_pretrained`` saves it,
with an image processor: the model to time `skipvit import hf` and `skipvit bench model` on at real
sizes, since nothing is downloaded here (random weights time the same as trained ones).

    python -m skipvit.benchmarks.random_vit --preset vit-small-16 --out runs/hf/vit-small-16

Sizes as in "An Image is Worth 16x16 Words" (ViT-B) and "Training data-efficient image transformers
& distillation through attention" (ViT-Ti, ViT-S): 224 x 224 RGB, patch 16, 12 layers, 1000 classes;
the processor is ViTImageProcessor's default (bilinear resize to 224, mean and std 0.5).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

# name -> (hidden size, heads); every preset: 12 layers, MLP 4 x hidden, patch 16, 224 x 224
PRESETS = {"vit-tiny-16": (192, 3), "vit-small-16": (384, 6), "vit-base-16": (768, 12)}


def write_random_vit(
    out: str | Path, preset: str = "vit-small-16", seed: int = 0, classes: int = 1000
) -> Path:
    """Write ``preset`` with seeded random weights to ``out``; returns ``out``."""
    from skipvit.training.hf.reference import import_transformers

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; Hint: one of {', '.join(PRESETS)}")
    transformers = import_transformers()
    hidden, heads = PRESETS[preset]
    config = transformers.ViTConfig(
        hidden_size=hidden,
        num_hidden_layers=12,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        image_size=224,
        patch_size=16,
        num_channels=3,
        id2label={i: f"class {i}" for i in range(classes)},
        label2id={f"class {i}": i for i in range(classes)},
    )
    torch.manual_seed(seed)
    model = transformers.ViTForImageClassification(config).eval()
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(root)
    processor = {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": 224, "width": 224},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    (root / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    return root


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m skipvit.benchmarks.random_vit", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--preset", default="vit-small-16", choices=sorted(PRESETS))
    p.add_argument("--out", required=True, help="directory to write (config.json, model.safetensors, ...)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", type=int, default=1000)
    args = p.parse_args(argv)
    root = write_random_vit(args.out, args.preset, args.seed, args.classes)
    print(f"wrote a random-initialised {args.preset} to {root}")


if __name__ == "__main__":
    main()
