"""`skipvit evaluate`: a bundle point on a split of the bundle's dataset."""

from __future__ import annotations

import json

from skipvit import flags
from skipvit.model.dyce import DyCEConfig, relative_compute
from skipvit.training.evaluate import evaluate_point
from skipvit.training.stats import accuracy_ci95


def evaluate_bundle(bundle_dir, point_id, split, limit, data_dir, batch_size, device, data=None) -> dict:
    """The figures ``skipvit evaluate`` prints (``evaluate_point``), with the point's relative compute."""
    run = evaluate_point(bundle_dir, point_id, split, limit, data_dir, batch_size, device, data)
    bundle, point, res = run.bundle, run.point, run.result
    relative = res.mean_layers / bundle.architecture.depth
    if point.method == "dyce":  # FLOPs / static FLOPs, counting the exit heads evaluated on the way
        config = DyCEConfig.from_params(point.params)
        relative = relative_compute(bundle.architecture, config, res.executed.sum(1))
    return {
        "point": point.id,
        "method": point.method,
        "split": split,
        "n": res.n,
        "accuracy": res.accuracy,
        "accuracy_ci95": accuracy_ci95(res.accuracy, res.n),
        "mean_layers": res.mean_layers,
        "depth": bundle.architecture.depth,
        "relative_compute": relative,
    }


def add_arguments(p) -> None:
    p.add_argument("--bundle", required=True)
    p.add_argument("--point", default=None, help="point id (default: the bundle's default point)")
    flags.add_evaluation(p)


def run(args) -> None:
    result = evaluate_bundle(
        args.bundle,
        args.point,
        args.split,
        args.limit,
        args.data_dir,
        args.batch_size,
        args.device,
        args.data,
    )
    low, high = result["accuracy_ci95"]
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"point {result['point']} ({result['method']}) on {result['split']} "
            f"[{result['n']} images]: accuracy {100 * result['accuracy']:.2f}% "
            f"(95% CI {100 * low:.2f}-{100 * high:.2f}%), "
            f"mean layers {result['mean_layers']:.3f} of {result['depth']}"
        )
