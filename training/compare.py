"""`skipvit compare`: two points of a bundle on the same images, paired.

Both points answer every image of the split, each as the service serves it. Only the images one
gets right and the other wrong (the discordant pairs) say which is better: the exact McNemar test
on them, and the accuracy difference with a 95% interval that accounts for the pairing
(``training.stats``). The verdict is "better", "worse" or "no significant difference" (p < 0.05).
"""

from __future__ import annotations

import json

from skipvit import flags
from skipvit.training.evaluate import evaluate_point
from skipvit.training.stats import paired_difference


def compare_points(
    bundle_dir, point: str, against: str, split: str, limit, data_dir, batch_size, device, data=None
) -> dict:
    runs = [
        evaluate_point(bundle_dir, p, split, limit, data_dir, batch_size, device, data)
        for p in (point, against)
    ]
    a, b = (r.result for r in runs)
    cmp = paired_difference(a.correct.tolist(), b.correct.tolist())
    return {
        "point": point,
        "against": against,
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
    flags.add_evaluation(p)


def run(args) -> None:
    where = (args.split, args.limit, args.data_dir, args.batch_size, args.device, args.data)
    result = compare_points(args.bundle, args.point, args.against, *where)
    print(json.dumps(result, indent=2) if args.json else render(result))
