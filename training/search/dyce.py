"""`skipvit search dyce`: DyCE configurations by a lambda sweep (DyCE: Dynamically Configurable Exiting).

A calibration part of the validation split (``--calibration-fraction``, half by default, a seeded
draw) is recorded once and every configuration simulated on it (``dyce_sim``); a sweep over lambda
picks the configurations (``dyce_sweep``). Each is then run through ``DyCEPolicy`` in the model on
the rest of the validation split, which the search never saw (the point's ``val_*`` figures, which
every later choice reads), and on the test split (what is reported), so that what is reported is
what is served. Figures on the images a search chose on flatter it; the report gives both gaps.
"""

from __future__ import annotations

import time

import torch

from skipvit import flags
from skipvit.model.bundle import Bundle, Point, load_bundle
from skipvit.model.dyce import DyCEConfig, DyCEPolicy, flops_by_exit, static_flops
from skipvit.model.exits import ExitSet, exits_of
from skipvit.model.vit import AdaptiveViT
from skipvit.training.configs import config_from
from skipvit.training.data import bundle_data
from skipvit.training.data.base import ArrayData
from skipvit.training.device import resolve_device
from skipvit.training.evaluate import evaluate
from skipvit.training.fronts import HV_REF, hypervolume, near_static, objectives
from skipvit.training.imported import measure_static
from skipvit.training.publish import numbered, publish
from skipvit.training.report import command_line, environment, markdown_table
from skipvit.training.search.dyce_sim import Choice, Simulator, record
from skipvit.training.search.dyce_sweep import SearchConfig, SweepResult, sweep
from skipvit.training.stats import accuracy_ci95

CALIBRATION_HELP = (
    "share of the validation split the search runs on; the rest measures the points' validation figures "
    "(0: search and measure on the whole validation split, which flatters the figures)"
)
CALIBRATION_SEED = 0


def calibration_split(val: ArrayData, fraction: float) -> tuple[ArrayData, ArrayData | None]:
    """(the images the search runs on, the held-out rest or None) by a seeded draw."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"--calibration-fraction {fraction}: expected a share in [0, 1)")
    if fraction == 0.0:
        return val, None
    perm = torch.randperm(len(val), generator=torch.Generator().manual_seed(CALIBRATION_SEED))
    n = round(fraction * len(val))
    return val.subset(perm[:n]), val.subset(perm[n:])


def add_arguments(p) -> None:
    p.add_argument("--bundle", required=True, help="bundle to search and write into")
    p.add_argument("--weights", default="dyce", help="weight set with exit heads (default: dyce)")
    p.add_argument("--name", default="dyce", help="point prefix (points <name>-1, <name>-2, ...)")
    p.add_argument("--lambdas", type=int, default=41, help="lambda values in the sweep")
    p.add_argument("--lambda-min", type=float, default=0.3, help="smallest lambda (weight of accuracy)")
    p.add_argument("--lambda-max", type=float, default=0.9995, help="largest lambda")
    p.add_argument("--thresholds", type=int, default=40, help="thresholds per exit (confidence quantiles)")
    p.add_argument("--max-rounds", type=int, default=100, help="circular search: most changes applied")
    p.add_argument("--max-points", type=int, default=16, help="most points written")
    p.add_argument("--calibration-fraction", type=float, default=0.5, metavar="F", help=CALIBRATION_HELP)
    p.add_argument("--batch-size", type=int, default=512)
    flags.add_device(p)
    flags.add_data_dir(p)
    flags.add_bundle_data(p)


def config_from_args(args) -> SearchConfig:
    return config_from(SearchConfig, args)


@torch.inference_mode()
def measure(
    model: AdaptiveViT, data: ArrayData, mean, std, config: DyCEConfig, batch_size: int, device
) -> dict:
    """Run ``config`` through the model (``DyCEPolicy``): accuracy, mean layers, relative compute."""
    exits = exits_of(model)
    assert isinstance(exits, ExitSet)
    res = evaluate(model, data, mean, std, DyCEPolicy(exits, config), batch_size, device)
    layers = res.executed.sum(1)  # (N,): a DyCE row runs a prefix, so this is where it was answered
    table = flops_by_exit(model.cfg, config)
    return {
        "accuracy": res.accuracy,
        "mean_layers": res.mean_layers,
        "relative_compute": float(table[layers.numpy()].mean() / static_flops(model.cfg)),
        "n": res.n,
    }


def run(args) -> None:
    cfg = config_from_args(args)
    bundle = load_bundle(args.bundle)
    if args.weights not in bundle.weight_sets:
        raise ValueError(
            f"{args.bundle} has no weight set {args.weights!r}; Hint: run `skipvit train exits "
            f"--bundle {args.bundle}` first"
        )
    device = resolve_device(args.device)
    model = bundle.build_model(args.weights, device)
    if exits_of(model) is None:
        raise ValueError(
            f"weight set {args.weights!r} has no exit heads; Hint: run `skipvit train exits` first"
        )
    splits = bundle_data(bundle, args.data_dir, args.data)
    bundle = measure_static(bundle, splits, device, args)
    mean, std = bundle.dataset["mean"], bundle.dataset["std"]
    print(f"DyCE search on weights {args.weights!r} of {args.bundle} | {cfg} | device {device}")
    t0 = time.time()
    calibration, held = calibration_split(splits.val, args.calibration_fraction)
    rec = record(model, calibration, mean, std, args.batch_size, device)
    sim = Simulator(rec, model.cfg, cfg.thresholds)
    record_s = time.time() - t0
    print(
        f"recorded {len(rec.positions) * len(rec.types)} exits on {rec.n} calibration images in {record_s:.0f} s; "
        f"backbone accuracy {sim.backbone_accuracy:.4f}"
    )
    result = sweep(sim, cfg)
    # The choice is made; only now is the test split read, once per chosen configuration.
    configs = [sim.config(c) for c in result.chosen]
    val = (
        None
        if held is None
        else [measure(model, held, mean, std, c, args.batch_size, device) for c in configs]
    )
    test = [measure(model, splits.test, mean, std, c, args.batch_size, device) for c in configs]
    write_search(
        load_bundle(bundle.root),
        args.name,
        args.weights,
        sim,
        result,
        configs,
        (val, test),
        cfg,
        record_s,
        device,
        args,
    )


def gap(points: list[Point], a: str, b: str, text: str) -> str:
    """``text`` over the points: the mean and range of metric ``a`` minus metric ``b``, in points."""
    d = [p.metrics[a] - p.metrics[b] for p in points]
    if not d:
        return f"{text}: no points"
    return f"{text} over {len(d)} points: mean {100 * sum(d) / len(d):+.2f} pt, from {100 * min(d):+.2f} to {100 * max(d):+.2f}"


def _lambdas_of(result: SweepResult, choice: Choice) -> list[float]:
    return [round(r["lambda"], 5) for r in result.rows if choice in (r["one_pass"], r["circular"])]


def write_search(
    bundle: Bundle,
    name: str,
    weights: str,
    sim: Simulator,
    result: SweepResult,
    configs: list[DyCEConfig],
    measured: tuple[list[dict] | None, list[dict]],
    cfg: SearchConfig,
    record_s: float,
    device,
    args,
) -> None:
    """Points ``<name>-1``, ``-2``, ... into ``bundle`` (loaded afresh: another command may have
    written points meanwhile), replacing the earlier DyCE points of that name. ``measured``: each
    configuration on the held-out validation images (None: none were held out) and on the test split."""
    held, test = measured
    points = []
    for i, (choice, config, cal, t) in enumerate(zip(result.chosen, configs, result.val, test, strict=True)):
        metrics = {
            "accuracy": round(t["accuracy"], 5),
            "mean_layers": round(t["mean_layers"], 4),
            "relative_compute": round(t["relative_compute"], 4),
            "split": "test",
            "n": t["n"],
            "accuracy_ci95": accuracy_ci95(t["accuracy"], t["n"]),
            "search_accuracy": round(cal.accuracy, 5),
            "search_relative_compute": round(cal.relative(sim.static), 4),
        }
        if held is None:  # validation figures are the search's own
            metrics |= {
                "val_accuracy": metrics["search_accuracy"],
                "val_mean_layers": round(cal.mean_layers, 4),
            }
            metrics["val_relative_compute"] = metrics["search_relative_compute"]
        else:
            v = held[i]
            metrics |= {
                "val_accuracy": round(v["accuracy"], 5),
                "val_mean_layers": round(v["mean_layers"], 4),
                "val_relative_compute": round(v["relative_compute"], 4),
            }
        params = {**config.to_params(), "lambdas": _lambdas_of(result, choice)}
        points.append(Point(f"{name}-{i + 1}", "dyce", weights, params, metrics))
    static = next((p for p in bundle.front if p.method == "static"), None)
    best = near_static(points, static)  # chosen on validation; test figures only reported
    best_text = (
        f"**{best.id}** (validation {100 * best.metrics['val_accuracy']:.2f}% at "
        f"{100 * best.metrics['val_relative_compute']:.1f}% of the static compute): test "
        f"{100 * best.metrics['accuracy']:.2f}% [{100 * best.metrics['accuracy_ci95'][0]:.2f}, "
        f"{100 * best.metrics['accuracy_ci95'][1]:.2f}] at {100 * best.metrics['relative_compute']:.1f}% of the "
        f"static compute; static {100 * static.metrics['accuracy']:.2f}% on test"
        if best and static
        else "none (static has no validation figures, or no point is within 0.5 pt of it on validation)"
    )
    gap_text = "; ".join(
        gap(points, a, b, text)
        for a, b, text in (
            ("search_accuracy", "val_accuracy", "search minus held-out validation accuracy"),
            ("val_accuracy", "accuracy", "validation minus test accuracy"),
        )
        if held is not None or a != "search_accuracy"
    )
    search_text = "whole validation split" if held is None else "calibration part of the validation split"
    held_text = (
        "the same images (no validation image was held out, so the validation figures are the search's own)"
        if held is None
        else f"the {held[0]['n'] if held else 0} held-out validation images (the points' validation figures)"
    )
    rel = sim.static
    sweep_rows = [
        [
            f"{r['lambda']:.4f}",
            f"{100 * r['one_pass_score'].accuracy:.2f}",
            f"{r['one_pass_score'].relative(rel):.3f}",
            f"{100 * r['circular_score'].accuracy:.2f}",
            f"{r['circular_score'].relative(rel):.3f}",
            r["changes"],
        ]
        for r in result.rows
    ]
    rows = [
        [
            p.id,
            DyCEConfig.from_params(p.params).describe(),
            f"{100 * p.metrics['val_accuracy']:.2f}",
            p.metrics["val_relative_compute"],
            f"{100 * p.metrics['accuracy']:.2f}",
            p.metrics["mean_layers"],
            p.metrics["relative_compute"],
        ]
        for p in points
    ]
    body = f"""
Command: `{command_line(args.argv)}`

- Exits: weight set `{weights}`, types {", ".join(f"`{t}`" for t in sim.rec.types)} after layers
  {", ".join(map(str, sim.rec.positions))}; predictions and confidences recorded once on the
  search's {search_text} ({sim.rec.n} images, {record_s:.0f} s; backbone {100 * sim.backbone_accuracy:.2f}%)
- Rule: a row leaves at the first enabled exit whose max softmax exceeds its threshold, else the
  backbone's head answers. Compute = embedding + layers run + every enabled exit head on the way
  (+ the head for rows that never leave), in FLOPs (`model.flops`, `model.exits`), relative to static
- Thresholds: {cfg.thresholds} per exit, midway between recorded confidences at evenly spaced quantiles
- Cost: λ·(1 − acc/acc_backbone) + (1 − λ)·relative compute, {cfg.lambdas} values of λ from
  {cfg.lambda_min} to {cfg.lambda_max} (odds log-spaced); per λ a one-pass search (positions in order)
  then a circular one (best single change while it helps, at most {cfg.max_rounds})
- Selection: all configurations found, kept while search accuracy rises strictly with search
  compute, at most {cfg.max_points} evenly spread; each then run through the model on {held_text}
  and on the test split
- Environment: {environment()}, device {device}; sweep {result.elapsed_s:.0f} s

Least validation compute within 0.5 pt of static on validation: {best_text}. Figures on the images
the search chose on are optimistic: {gap_text}.
Hypervolume (pymoo HV over (relative compute, 1 − accuracy), reference {HV_REF}):
**{hypervolume(objectives(points)):.4f}** on the test split.

{
        markdown_table(
            [
                "point",
                "exits (after:type>threshold)",
                "val acc %",
                "val compute",
                "test acc %",
                "mean layers",
                "relative compute",
            ],
            rows,
        )
    }

Lambda sweep (the search's images):

{
        markdown_table(
            ["λ", "one-pass acc %", "one-pass compute", "circular acc %", "circular compute", "changes"],
            sweep_rows,
        )
    }
"""
    ours = numbered(name)
    publish(
        bundle,
        name,
        lambda *_: body,
        points,
        replaces=lambda p: p.method == "dyce" and ours(p),
        fronts=True,
    )
    print(f"wrote {len(points)} points {name}-1..{len(points)} into {bundle.root}")
    for p in points:
        print(
            f"  {p.id}: test accuracy {100 * p.metrics['accuracy']:.2f}% at {p.metrics['mean_layers']:.3f} "
            f"layers, relative compute {p.metrics['relative_compute']:.4f} (val "
            f"{100 * p.metrics['val_accuracy']:.2f}% at {p.metrics['val_relative_compute']:.4f})"
        )
    print(f"least validation compute within 0.5 pt of static on validation: {best_text.replace('**', '')}")
