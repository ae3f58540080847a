"""`skipvit export hf --bundle DIR --point static --out DIR`: a bundle's model as a transformers
``save_pretrained`` directory (config.json, model.safetensors, preprocessor_config.json).

The backbone maps onto transformers' ViT exactly: pre-norm blocks, a learned position embedding
added after the CLS token is prepended, the final LayerNorm, a linear head on CLS, fused q/k/v
split into three projections (``training.hf.tensors``). A model with a distillation token goes
out as DeiT, with its second head as ``DeiTForImageClassificationWithTeacher``; a model with
shared layers (UViT) writes its one block once per layer. What is written computes the point
that runs every layer: a point whose policy skips or exits (RL gates, NSGA, LAC, DyCE) has no
counterpart in transformers and is refused, and an RL agent or exit heads in the weight set are
left behind. The preprocessor makes the input this project's input paths make (resize to the
image size, bilinear; x / 255; the dataset's mean and std), or, for an imported bundle, restores
the processor it came with. ``--check`` loads the result with transformers and compares;
``--check-accuracy SPLIT`` also classifies a split of the bundle's dataset with transformers alone
(its own image processor on the raw images) and with the bundle.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from skipvit.model.bundle import load_bundle
from skipvit.training.hf.config import hf_config, hf_preprocessor
from skipvit.training.hf.import_hf import TOLERANCE, check_parity
from skipvit.training.hf.tensors import to_hf


def add_arguments(p) -> None:
    p.add_argument("--bundle", required=True)
    p.add_argument("--point", default="static", help="a point that runs every layer (default static)")
    p.add_argument("--out", required=True, help="the directory to write (new or empty)")
    p.add_argument(
        "--check",
        action="store_true",
        help=f"load the result with transformers (offline) and compare the logits; fails above {TOLERANCE:g}",
    )
    p.add_argument("--check-n", type=int, default=8, help="random inputs the check compares (default 8)")
    p.add_argument(
        "--check-accuracy",
        metavar="SPLIT",
        default=None,
        help="also classify the bundle's SPLIT (e.g. test) with transformers alone and with the bundle; "
        "fails unless both accuracies are equal",
    )
    p.add_argument("--data-dir", default=None, help="where the bundle's dataset lies (for --check-accuracy)")


def export_hf(bundle_dir: str | Path, point_id: str, out: str | Path) -> Path:
    bundle = load_bundle(bundle_dir)
    point = bundle.point(point_id)
    if point.method != "static":
        raise ValueError(
            f"point {point.id!r} is a {point.method} point: its policy has no counterpart in "
            "transformers; Hint: export a point that runs every layer (e.g. --point static)"
        )
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty; Hint: pick a new or empty --out directory")
    cfg = bundle.architecture
    tensors = to_hf(bundle.load_weights(point.weights), cfg)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = hf_config(cfg, list(bundle.dataset["classes"]))
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    pre = hf_preprocessor(cfg, bundle.dataset, bundle.preprocess)
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
    return out


def run(args) -> None:
    out = export_hf(args.bundle, args.point, args.out)
    arch = json.loads((out / "config.json").read_text())["architectures"][0]
    print(f"wrote {arch} to {out} (point {args.point} of {args.bundle})")
    if not args.check:
        return
    _, worst = check_parity(load_bundle(args.bundle), out, args.check_n, args.point)
    if worst > TOLERANCE:
        raise ValueError(f"the export differs from the bundle by {worst:.2e} (> {TOLERANCE:g})")
    if args.check_accuracy:
        check_accuracy(args.bundle, out, args.point, args.check_accuracy, args.data_dir)


def check_accuracy(bundle_dir, out: Path, point: str, split: str, data_dir) -> None:
    """Classify the bundle's ``split`` with transformers alone and with the bundle; print both
    accuracies and the agreement; raise unless the accuracies are equal."""
    from skipvit.training.data import bundle_data
    from skipvit.training.hf.reference import accuracy_check  # imports transformers

    bundle = load_bundle(bundle_dir)
    data = bundle_data(bundle, data_dir).split(split)
    r = accuracy_check(bundle, out, data, point)
    print(
        f"{split} split, {r['n']} images: bundle {100 * r['accuracy_bundle']:.2f}%, transformers alone "
        f"{100 * r['accuracy_transformers']:.2f}%, same prediction on {100 * r['same_prediction']:.2f}%"
    )
    if r["accuracy_bundle"] != r["accuracy_transformers"]:
        raise ValueError("the exported model's accuracy differs from the bundle's")
