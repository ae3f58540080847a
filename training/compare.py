"""`skipvit compare`: two points on the same images, paired; both of one bundle, or the second of
another bundle trained on the same data and split (``--against-bundle``: e.g. a static model
trained for as many epochs as the adaptive one).

Both points answer every image of the split, each as the service serves it. Only the images one
gets right and the other wrong (the discordant pairs) say which is better: the exact McNemar test
on them, and the accuracy difference with a 95% interval that accounts for the pairing
(``training.stats``). The verdict is "better", "worse" or "no significant difference" (p < 0.05).
"""

from __future__ import annotations

import json

import torch

from skipvit import flags
from skipvit.model.bundle import load_bundle
from skipvit.training.evaluate import evaluate_point
from skipvit.training.publish import publish
from skipvit.training.report import command_line
from skipvit.training.stats import paired_difference


def compare_points(
    bundle_dir,
    point: str,
    against: str,
    split: str,
    limit,
    data_dir,
    batch_size,
    device,
    data=None,
    against_bundle=None,
) -> dict:
    runs = [
        evaluate_point(root, p, split, limit, data_dir, batch_size, device, data)
        for root, p in ((bundle_dir, point), (against_bundle or bundle_dir, against))
    ]
    first, second = (r.data for r in runs)
    if not (torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)):
        raise ValueError(
            f"{against_bundle} does not read the same {split} images as {bundle_dir} (another dataset, "
            "split or preprocessing), so the two points cannot be paired"
        )
    a, b = (r.result for r in runs)
    cmp = paired_difference(a.correct.tolist(), b.correct.tolist())
    return {
        "point": point,
        "against": against if against_bundle is None else f"{against_bundle}:{against}",
        "split": split,
        "n": cmp.n,
        "accuracy": a.accuracy,
        "against_accuracy": b.accuracy,
        "mean_layers": a.mean_layers,
        "against_mean_layers": b.mean_layers,
        "only_point_right": cmp.a_only,
        "only_against_right": cmp.b_only,
        "difference": cmp.difference,
        "difference_ci95": [cmp.low, cmp.high],
        "p_value": cmp.p_value,
        "verdict": cmp.verdict(point, against),
    }


def render(r: dict) -> str:
    low, high = r["difference_ci95"]
    return (
        f"{r['point']} vs {r['against']} on {r['split']} [{r['n']} images, paired]: "
        f"{100 * r['accuracy']:.2f}% at {r['mean_layers']:.3f} layers vs {100 * r['against_accuracy']:.2f}% at "
        f"{r['against_mean_layers']:.3f} layers; difference {100 * r['difference']:+.2f} pt "
        f"(95% CI {100 * low:+.2f} to {100 * high:+.2f}); discordant images {r['only_point_right']} / "
        f"{r['only_against_right']}, exact McNemar p = {r['p_value']:.3g}: {r['verdict']}"
    )


def add_arguments(p) -> None:
    p.add_argument("--bundle", required=True)
    p.add_argument("--point", required=True, help="the point to compare")
    p.add_argument("--against", default="static", help="the point it is compared with (default: static)")
    p.add_argument(
        "--against-bundle",
        default=None,
        help="read --against from this bundle (same dataset and split; default: --bundle)",
    )
    flags.add_evaluation(p)
    p.add_argument(
        "--into-report",
        action="store_true",
        help="also put the result in --bundle's REPORT.md (and refresh its manifest)",
    )


def run(args) -> None:
    where = (args.split, args.limit, args.data_dir, args.batch_size, args.device, args.data)
    result = compare_points(args.bundle, args.point, args.against, *where, against_bundle=args.against_bundle)
    print(json.dumps(result, indent=2) if args.json else render(result))
    if args.into_report:
        body = f"Command: `{command_line(args.argv)}`\n\n{render(result)}"
        title = f"compare: {result['point']} vs {result['against']} ({result['split']})"
        publish(load_bundle(args.bundle), title, lambda *_: body)
