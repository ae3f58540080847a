"""`skipvit analyze`: how a bundle point spends its layers on the test split (the analyses of the
thesis "Reinforcement Learning Based Layer Skipping Vision Transformer for Efficient Inference").

- **path distribution** (thesis Table 12): each image's path as a string like ``"110100111"``
  (1 = the layer ran), counted over the split and sorted by frequency;
- **processing ratio** (Figure 17): per layer, the fraction of images that ran it;
- **unnecessary activations** (Table 5): for each correctly classified image and each layer it
  ran, replay its path with only that layer forced off; if the image is still correct, the layer
  was unnecessary for it. Reported per class, overall and per layer.

Layers are numbered from 1 in every file written (as in the thesis); tensors index from 0.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from skipvit import flags
from skipvit.model.bundle import load_bundle
from skipvit.model.policy import RUN, SKIP, MaskPolicy
from skipvit.model.vit import AdaptiveViT
from skipvit.training.data import bundle_data
from skipvit.training.data.augment import to_float
from skipvit.training.device import full_precision
from skipvit.training.drop_one import drop_one_rows, render_drop_one
from skipvit.training.evaluate import evaluate_point
from skipvit.training.publish import publish
from skipvit.training.report import command_line, markdown_table

TOP_PATHS = 15

# ---------------------------------------------------------------- paths and ratios


def path_strings(executed: Tensor) -> list[str]:
    """(N, L) bool -> one string per row, ``"1"`` where the layer ran."""
    return ["".join("1" if v else "0" for v in row) for row in executed.bool().tolist()]


def path_distribution(executed: Tensor) -> list[dict[str, Any]]:
    """Distinct paths with their count, share of rows (%) and layers run; most frequent first."""
    n = executed.shape[0]
    counts = Counter(path_strings(executed))
    rows = [
        {"path": p, "count": c, "percent": 100.0 * c / n, "layers": p.count("1")} for p, c in counts.items()
    ]
    return sorted(rows, key=lambda r: (-r["count"], r["path"]))


def processing_ratio(executed: Tensor) -> list[float]:
    """Per layer, the fraction of rows that ran it (zeros when there are no rows)."""
    if executed.shape[0] == 0:
        return [0.0] * executed.shape[1]
    return executed.float().mean(dim=0).tolist()


# ---------------------------------------------------------------- unnecessary activations


def replay_decisions(executed: Tensor, off: Tensor) -> Tensor:
    """(B, L) paths and (B,) layer to force off (-1: none) -> (B, L) int8 RUN/SKIP decisions."""
    run = executed.bool().clone()  # (B, L)
    rows = (off >= 0).nonzero().squeeze(1)  # (K,)
    run[rows, off[rows]] = False
    return torch.where(run, RUN, SKIP).to(torch.int8)


@torch.inference_mode()
def unnecessary_matrix(
    model: AdaptiveViT,
    images_float: Tensor,
    labels: Tensor,
    executed: Tensor,
    candidates: Tensor,
    batch_size: int,
    device: torch.device | str,
) -> tuple[Tensor, Tensor]:
    """Replay each (image, layer) pair with that one layer off, batched over all pairs.

    ``candidates`` (N,) bool marks the images to examine. Returns ``flags`` (N, L) bool, True
    where the image ran the layer and is still correct without it, and ``replay_ok`` (N,) bool,
    True where replaying the unmodified path is correct (False off the candidates).
    """
    device = torch.device(device)
    n, depth = executed.shape
    ex, labels = executed.bool().cpu(), labels.cpu()
    rows = candidates.bool().cpu().nonzero().squeeze(1)  # (M,)
    pairs = (ex & candidates.bool().cpu()[:, None]).nonzero()  # (P, 2): image, layer
    # The unmodified replay of every candidate rides along as layer -1.
    pairs = torch.cat([torch.stack([rows, torch.full_like(rows, -1)], dim=1), pairs])  # (M + P, 2)
    still = torch.zeros(pairs.shape[0], dtype=torch.bool)
    was_training = model.training
    model.eval()
    for start in range(0, pairs.shape[0], batch_size):
        idx, off = pairs[start : start + batch_size].unbind(1)  # (b,), (b,)
        policy = MaskPolicy(replay_decisions(ex[idx], off).to(device))
        with full_precision(device):
            out = model(images_float[idx].to(device), policy)
        still[start : start + idx.shape[0]] = out.logits.argmax(-1).cpu() == labels[idx]
    model.train(was_training)
    base = pairs[:, 1] < 0
    replay_ok = torch.zeros(n, dtype=torch.bool)
    replay_ok[pairs[base, 0]] = still[base]
    flags = torch.zeros(n, depth, dtype=torch.bool)
    flags[pairs[~base, 0], pairs[~base, 1]] = still[~base]
    return flags, replay_ok


def summarize_unnecessary(
    flags: Tensor, executed: Tensor, labels: Tensor, correct: Tensor, classes: Sequence[str]
) -> dict[str, Any]:
    """Per class, overall and per layer: how many correct images ran a layer they did not need."""
    any_flag = flags.any(dim=1)  # (N,)
    per_class = []
    for k, name in enumerate(classes):
        mine = correct & (labels == k)
        n_ok, n_un = int(mine.sum()), int((mine & any_flag).sum())
        per_class.append(
            {
                "class": k,
                "name": name,
                "correct": n_ok,
                "unnecessary": n_un,
                "percent": 100.0 * n_un / n_ok if n_ok else None,
            }
        )
    n_ok, n_un = int(correct.sum()), int((correct & any_flag).sum())
    pcts = [r["percent"] for r in per_class if r["percent"] is not None]
    ran = executed.bool() & correct[:, None]  # (N, L)
    per_layer = []
    for j in range(executed.shape[1]):
        n_ran, n_flag = int(ran[:, j].sum()), int(flags[:, j].sum())
        per_layer.append(
            {
                "layer": j + 1,
                "ran_correct": n_ran,
                "unnecessary": n_flag,
                "percent": 100.0 * n_flag / n_ran if n_ran else None,
            }
        )
    return {
        "correct": n_ok,
        "unnecessary": n_un,
        "percent": 100.0 * n_un / n_ok if n_ok else None,
        "mean_class_percent": sum(pcts) / len(pcts) if pcts else None,
        "per_class": per_class,
        "per_layer": per_layer,
    }


def unnecessary_activations(
    model: AdaptiveViT,
    images_float: Tensor,
    labels: Tensor,
    executed: Tensor,
    predictions: Tensor,
    classes: Sequence[str],
    batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Thesis Table 5 on the images the policy classified correctly (``predictions == labels``).

    ``replay_mismatch`` counts correct images whose unmodified path, replayed with a
    ``MaskPolicy``, is no longer correct: 0 for gate policies; a policy with its own exit heads
    answers differently from the replay, and its figures then need care.
    """
    labels, predictions = labels.cpu(), predictions.cpu()
    correct = predictions == labels
    flags, replay_ok = unnecessary_matrix(model, images_float, labels, executed, correct, batch_size, device)
    summary = summarize_unnecessary(flags, executed.bool().cpu(), labels, correct, classes)
    summary["replay_mismatch"] = int((correct & ~replay_ok).sum())
    return summary


# ---------------------------------------------------------------- report files


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}%"


def render_markdown(result: dict[str, Any]) -> str:
    un = result["unnecessary"]
    paths = result["paths"][:TOP_PATHS]
    path_rows = [
        [i + 1, f"`{r['path']}`", r["layers"], r["count"], _pct(r["percent"])] for i, r in enumerate(paths)
    ]
    layer_rows = [
        [row["layer"], f"{ratio:.4f}", row["ran_correct"], row["unnecessary"], _pct(row["percent"])]
        for ratio, row in zip(result["processing_ratio"], un["per_layer"], strict=True)
    ]
    class_rows = [
        [r["class"], r["name"], r["correct"], r["unnecessary"], _pct(r["percent"])] for r in un["per_class"]
    ]
    lines = [
        f"# Analysis of point `{result['point']}` ({result['method']})",
        "",
        f"Bundle `{result['bundle']}`, {result['split']} split, {result['n']} images: accuracy "
        f"{100 * result['accuracy']:.2f}%, mean layers {result['mean_layers']:.3f} of {result['depth']}, "
        f"{len(result['paths'])} distinct paths.",
        "",
        f"## Layer execution paths (top {len(paths)})",
        "",
        markdown_table(["rank", "path", "layers", "images", "share"], path_rows),
        "",
        "## Per-layer processing ratio",
        "",
        markdown_table(
            ["layer", "ran it", "ran it, correct", "unnecessary", "unnecessary share"], layer_rows
        ),
        "",
        "## Unnecessary activations per class",
        "",
        "A correctly classified image activates a layer unnecessarily when forcing that one layer off "
        "(the rest of its path unchanged) still classifies it correctly.",
        "",
        markdown_table(["class", "name", "correct", "≥1 unnecessary", "share"], class_rows),
        "",
        f"Overall: {un['unnecessary']} of {un['correct']} correct images ({_pct(un['percent'])}) activate "
        f"at least one layer unnecessarily; mean over classes {_pct(un['mean_class_percent'])}.",
    ]
    if un["replay_mismatch"]:
        lines.append(
            f"\nNote: {un['replay_mismatch']} correct images are not correct when their path is replayed "
            "with the final head (the policy answers some rows from its own exit heads)."
        )
    if "drop_one" in result:
        lines += ["", render_drop_one(result["drop_one"], result["weights"])]
    return "\n".join(lines) + "\n"


def draw_processing_ratio(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratio = result["processing_ratio"]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.bar(range(1, len(ratio) + 1), ratio, color="C0")
    ax.set_xticks(range(1, len(ratio) + 1))
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("layer")
    ax.set_ylabel("fraction of images that ran it")
    ax.set_title(
        f"{result['point']}: processing ratio (mean {result['mean_layers']:.2f} of {result['depth']} layers)"
    )
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def analyze_bundle(
    bundle_dir: str | Path,
    point_id: str | None = None,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 512,
    device: str = "auto",
    out_dir: str | Path | None = None,
    drop_one: bool = False,
    data_name: str | None = None,
) -> dict[str, Any]:
    """Run the three analyses on a point's test split; write analysis.{json,md} and processing_ratio.png.

    The bundle's manifest refuses files it does not list, so the default output directory is
    ``runs/analysis/<bundle name>/<point>/`` under the working directory, not the bundle.
    """
    run = evaluate_point(bundle_dir, point_id, "test", limit, data_dir, batch_size, device, data_name)
    bundle, point, model, data, dev, res = run.bundle, run.point, run.model, run.data, run.device, run.result
    ds = bundle.dataset
    images = to_float(data.images, ds["mean"], ds["std"])  # (N, C, H, W) on the CPU
    depth = bundle.architecture.depth
    result: dict[str, Any] = {
        "bundle": Path(bundle_dir).resolve().name,
        "point": point.id,
        "method": point.method,
        "split": "test",
        "n": res.n,
        "accuracy": res.accuracy,
        "mean_layers": res.mean_layers,
        "depth": depth,
        "processing_ratio": processing_ratio(res.executed),
        "paths": path_distribution(res.executed),
        "unnecessary": unnecessary_activations(
            model, images, data.labels, res.executed, res.predictions, ds["classes"], batch_size, dev
        ),
    }
    if drop_one:
        splits = bundle_data(run.bundle, data_dir, data_name)
        both = {"val": splits.val.head(limit), "test": data}
        result["drop_one"] = drop_one_rows(model, both, ds["mean"], ds["std"], batch_size, dev)
        result["weights"] = point.weights
    out = Path(out_dir) if out_dir is not None else Path("runs/analysis") / result["bundle"] / point.id
    out.mkdir(parents=True, exist_ok=True)
    (out / "analysis.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "analysis.md").write_text(render_markdown(result))
    draw_processing_ratio(result, out / "processing_ratio.png")
    result["out_dir"] = str(out)
    return result


# ---------------------------------------------------------------- the command


def add_arguments(p) -> None:
    p.add_argument("--bundle", required=True)
    p.add_argument("--point", default=None, help="point id (default: the bundle's default point)")
    flags.add_data_dir(p)
    flags.add_bundle_data(p)
    p.add_argument("--limit", type=int, default=None, help="analyse only the first N test images")
    p.add_argument("--batch-size", type=int, default=512)
    flags.add_device(p)
    p.add_argument("--out", default=None, help="output directory (default runs/analysis/<bundle>/<point>)")
    p.add_argument(
        "--drop-one",
        action="store_true",
        help="also the drop-one-layer table: the point's weights with each single layer removed (val and test)",
    )
    p.add_argument(
        "--into-report",
        action="store_true",
        help="also put the tables in the bundle's REPORT.md (and refresh its manifest)",
    )


def run(args) -> None:
    result = analyze_bundle(
        args.bundle,
        args.point,
        args.data_dir,
        args.limit,
        args.batch_size,
        args.device,
        args.out,
        args.drop_one,
        args.data,
    )
    markdown = render_markdown(result)
    print(markdown)
    print(f"written to {result['out_dir']}")
    if args.into_report:
        nested = re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + 2) + " ", markdown, flags=re.M)
        body = f"Command: `{command_line(args.argv)}`\n\n{nested}"
        publish(load_bundle(args.bundle), f"analysis: {result['point']}", lambda *_: body)
