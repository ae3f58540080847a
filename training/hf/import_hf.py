"""`skipvit import hf DIR --out BUNDLE`: a Hugging Face ViT classifier as a bundle.

The bundle's ``static`` point computes what transformers computes: the architecture and the
labels come from config.json (``training.hf.config``), the weights from its safetensors files
(``training.hf.tensors``), and the input from preprocessor_config.json, folded into the dataset
section's mean and std so that every input path of this project makes the input transformers
makes (``model.preprocess``). ``--check`` loads the directory with transformers, offline, and
prints the largest logit difference on random inputs (``training.hf.reference``).

An imported bundle records no dataset it was trained on (``dataset.name`` is ``imported``): the
commands that read one (evaluate, the searches, RL and exit training) take its labelled images as
an image folder on their command line (``--data folder --data-dir DIR``), read as the model takes
them (``training.data.load_bundle_splits``).
"""

from __future__ import annotations

from pathlib import Path

from skipvit.model.bundle import Point, load_bundle, new_bundle, sha256_file
from skipvit.model.vit import build_model
from skipvit.training.hf.config import architecture, class_names, preprocess, vit_config
from skipvit.training.hf.source import read_source
from skipvit.training.hf.tensors import TensorError, from_hf
from skipvit.training.report import command_line, markdown_table, update_section

TOLERANCE = 1e-4  # the largest logit difference --check accepts (float32)
SECTION = "Imported from Hugging Face"


def add_arguments(p) -> None:
    p.add_argument(
        "dir",
        help="a directory written by save_pretrained (config.json, model.safetensors, "
        "preprocessor_config.json)",
    )
    p.add_argument("--out", required=True, help="the bundle directory to write (new or empty)")
    p.add_argument(
        "--check",
        action="store_true",
        help=f"load DIR with transformers too (offline) and compare the logits; fails above {TOLERANCE:g}",
    )
    p.add_argument("--check-n", type=int, default=8, help="random inputs the check compares (default 8)")


def import_hf(src_dir: str | Path, out: str | Path, argv: list[str] | None = None) -> tuple[Path, list[str]]:
    """Write the bundle; return its path and the notes on what the server does otherwise."""
    src = read_source(src_dir)
    name, prefix, _ = architecture(src.config)
    cfg = vit_config(src.config)
    pre, notes = preprocess(src.preprocessor, cfg)
    state, dropped = from_hf(src.load_tensors(), cfg, prefix)
    try:
        build_model(cfg).load_state_dict(state)
    except RuntimeError as e:
        raise TensorError(f"the weights do not fit config.json: {e}") from None
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty; Hint: pick a new or empty --out directory")
    mean, std = pre.folded()
    dataset = {
        "name": "imported",
        "classes": class_names(src.config),
        "image_size": cfg.image_size,
        "channels": cfg.in_channels,
        "mean": mean,
        "std": std,
        "hflip": False,
    }
    bundle = new_bundle(out, cfg, dataset)
    bundle.preprocess = pre
    bundle.add_weight_set("static", state)
    metrics = {"mean_layers": float(cfg.depth), "relative_compute": 1.0}
    bundle.upsert_points([Point("static", "static", "static", {}, metrics)])
    files = "\n".join(f"- `{p.name}` sha256 `{sha256_file(p)}`" for p in src.weight_files)
    rows = [[k, f"`{v}`"] for k, v in cfg.to_dict().items()]
    body = (
        f"`{command_line(argv)}`\n\n{name} from `{src.root}` "
        f"(transformers {src.config.get('transformers_version', 'unknown')}):\n\n{files}\n\n"
        f"{markdown_table(['architecture', 'value'], rows)}\n\n"
        f"Input: {pre.source}; the notes below are where the server's own preprocessing differs.\n\n"
        + "".join(f"- {n}\n" for n in [*notes, *dropped] or ["none"])
    )
    update_section(out, SECTION, body)
    bundle.save()
    return out, [*notes, *dropped]


def format_check(result: dict) -> str:
    line = (
        f"parity with transformers on {result['n']} random inputs: max |logit difference| "
        f"{result['logits_max_abs_diff']:.2e}, same top-1 {100 * result['same_top1']:.0f}%"
    )
    if result["images_max_abs_diff"] is not None:
        line += f"; from uint8 images through each side's preprocessing: {result['images_max_abs_diff']:.2e}"
    return line


def run(args) -> None:
    out, notes = import_hf(args.dir, args.out, getattr(args, "argv", None))
    bundle = load_bundle(out)
    cfg = bundle.architecture
    print(
        f"wrote bundle {out}: {cfg.depth} layers, width {cfg.dim}, {cfg.num_classes} classes, "
        f"{cfg.image_size}x{cfg.image_size}x{cfg.in_channels} input"
    )
    for note in notes:
        print(f"note: {note}")
    if not args.check:
        return
    line, worst = check_parity(bundle, args.dir, args.check_n)
    update_section(
        out, "Parity with transformers", f"`{command_line(getattr(args, 'argv', None))}`\n\n{line}\n"
    )
    bundle.save()
    if worst > TOLERANCE:
        raise ValueError(
            f"the imported bundle differs from transformers by {worst:.2e} (> {TOLERANCE:g}); "
            "Hint: the directory's model is not one this importer reproduces; please report it"
        )


def check_parity(bundle, hf_dir, n: int, point: str = "static") -> tuple[str, float]:
    """Compare ``point`` of ``bundle`` with the transformers model in ``hf_dir`` (``compare``),
    print the result's line; returns it and the largest difference."""
    from skipvit.training.hf.reference import compare  # imports transformers

    try:
        result = compare(bundle, hf_dir, n=n, point=point)
    except ImportError as e:
        raise ValueError(str(e)) from None
    line = format_check(result)
    print(line)
    return line, max(result["logits_max_abs_diff"], result["images_max_abs_diff"] or 0.0)
