"""`skipvit search lac`: LAC (L2 Norm Guided Adaptive Computation) points for a bundle's weight
sets. Nothing is trained.

LAC needs no parameters of its own (``model.lac`` has the rule), so the "search" is a sweep: for
each weight set (default ``static``), each alpha and each mode, the test split is evaluated
through the model's real per-layer loop and a point is written:

- ``lac-ex-<alpha>`` (``per-example``): each image halts on its own; evaluated in batches of
  ``--batch-size`` rows, which changes nothing (the decision of a row reads only that row);
- ``lac-batch<K>-<alpha>`` (``per-batch``): the whole batch halts together on the norm of the whole
  batch, so the figures depend on what shares the batch. The server runs these points one request
  per forward (``model.points.batch_key`` is None): a request's own images are the batch. So a
  per-batch point is measured as the server runs a request of ``--request-images`` K images
  (default 8): on consecutive groups of K images, and K is in its id and its params
  (``request_images``). K is at least 2: at one image per forward a per-batch point would be the
  per-example point measured again.

Every point is measured on the validation split (``val_*`` figures, which every choice made on
the front reads) and on the test split (its reported figures, with their 95% interval).

Points on another weight set ``W`` are named ``lac-W-ex-<alpha>`` / ``lac-W-batch<K>-<alpha>``. A rerun
replaces every earlier LAC point on the weight sets it sweeps. All swept points go on the front.
"""

from __future__ import annotations

import time

import torch

from skipvit import flags
from skipvit.model.bundle import Bundle, Point, load_bundle
from skipvit.model.lac import MODES, LACPolicy, check_alpha
from skipvit.training.data import bundle_data
from skipvit.training.device import resolve_device
from skipvit.training.evaluate import evaluate
from skipvit.training.fronts import HV_REF, hypervolume, objectives
from skipvit.training.imported import measure_static
from skipvit.training.publish import publish
from skipvit.training.report import command_line, environment, markdown_table

REQUEST_IMAGES_HELP = (
    "per-batch: measure as the server runs requests of K images (>= 2), on groups of K images"
)
MODE_TAG = {"per-example": "ex", "per-batch": "batch"}


def point_id(weights: str, mode: str, alpha: float, request_images: int = 1) -> str:
    prefix = "lac" if weights == "static" else f"lac-{weights}"
    size = request_images if mode == "per-batch" else ""
    return f"{prefix}-{MODE_TAG[mode]}{size}-{alpha:g}"


def parse_alphas(text: str) -> list[float]:
    try:
        alphas = [check_alpha(float(a)) for a in text.split(",") if a.strip()]
    except ValueError as e:
        raise ValueError(f"--alphas {text!r}: {e}") from None
    if not alphas:
        raise ValueError(f"--alphas {text!r} names no alpha; Hint: e.g. --alphas 0.1,0.5,1.0")
    return sorted(set(alphas))


def sweep(
    model, splits: dict, mean, std, alphas, modes, batch_size: int, request_images: int, device
) -> list[dict]:
    """One record per (mode, alpha): an EvalResult per split in ``splits`` (name -> data), each
    measured as served: per-example in batches of ``batch_size``, per-batch in requests of
    ``request_images``."""
    records = []
    for mode in modes:
        served_batch = batch_size if mode == "per-example" else request_images
        for alpha in alphas:
            t0 = time.time()
            results = {
                name: evaluate(model, data, mean, std, LACPolicy(alpha, mode), served_batch, device)
                for name, data in splits.items()
            }
            rec = {"mode": mode, "alpha": alpha, "results": results, "batch": served_batch}
            rec["seconds"] = time.time() - t0
            records.append(rec)
            res = results["test"]
            print(
                f"  {mode} alpha {alpha:g}: test accuracy {100 * res.accuracy:.2f}%, mean layers "
                f"{res.mean_layers:.3f} ({rec['seconds']:.0f} s)",
                flush=True,
            )
    return records


def add_arguments(p) -> None:
    p.add_argument("--bundle", required=True, help="bundle to evaluate and write into")
    p.add_argument("--weights", default="static", help="comma-separated weight sets (default: static)")
    p.add_argument("--alphas", default="0.05,0.1,0.2,0.3,0.4,0.6,0.8,1.0", help="comma-separated alphas")
    p.add_argument("--modes", default="both", choices=["both", "per-example", "per-batch"])
    p.add_argument("--batch-size", type=int, default=512, help="per-example: images per forward")
    p.add_argument("--request-images", type=int, default=8, metavar="K", help=REQUEST_IMAGES_HELP)
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images of each split")
    flags.add_device(p)
    flags.add_data_dir(p)
    flags.add_bundle_data(p)


def run(args) -> None:
    bundle = load_bundle(args.bundle)
    weight_sets = [w for w in args.weights.split(",") if w]
    for w in weight_sets:
        if w not in bundle.weight_sets:
            raise ValueError(
                f"{args.bundle} has no weight set {w!r} (it has {', '.join(bundle.weight_sets)}); "
                "Hint: pass one of those with --weights"
            )
    alphas = parse_alphas(args.alphas)
    modes = MODES if args.modes == "both" else (args.modes,)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if "per-batch" in modes and args.request_images < 2:
        raise ValueError(
            f"--request-images {args.request_images}: a per-batch point measured on requests of one image "
            "is the per-example point measured again; Hint: pass 2 or more, or --modes per-example"
        )
    device = resolve_device(args.device)
    ds = bundle.dataset
    splits = bundle_data(bundle, args.data_dir, args.data)
    bundle = measure_static(bundle, splits, device, args)
    data = {"val": splits.val.head(args.limit), "test": splits.test.head(args.limit)}
    t0 = time.time()
    results = {}
    for w in weight_sets:
        model = bundle.build_model(w, device)
        print(
            f"LAC sweep on weights {w!r} of {args.bundle}: alphas {alphas}, modes {list(modes)}, "
            f"{len(data['val'])} validation and {len(data['test'])} test images, device {device}",
            flush=True,
        )
        with torch.inference_mode():
            results[w] = sweep(
                model,
                data,
                ds["mean"],
                ds["std"],
                alphas,
                modes,
                args.batch_size,
                args.request_images,
                device,
            )
    elapsed = time.time() - t0
    write_points(
        load_bundle(bundle.root),
        results,
        len(data["test"]),
        len(data["test"]) == len(splits.test),
        args,
        device,
        elapsed,
    )


def same_decisions(a, b) -> bool:
    """Two evaluations of the same images that ran the same layers and answered alike on every one."""
    return torch.equal(a.executed, b.executed) and torch.equal(a.correct, b.correct)


def write_points(
    bundle: Bundle, results: dict[str, list[dict]], n: int, full: bool, args, device, elapsed: float
) -> None:
    """The swept points into ``bundle`` (loaded afresh), replacing every earlier LAC point on the
    weight sets swept."""
    depth = bundle.architecture.depth
    points, rows, repeats = [], [], []
    for w, records in results.items():
        kept: dict[str, tuple[str, object]] = {}  # mode -> (id, validation result) of the last point kept
        for rec in records:
            res, val, mode, alpha = rec["results"]["test"], rec["results"]["val"], rec["mode"], rec["alpha"]
            pid = point_id(w, mode, alpha, rec["batch"])
            if mode in kept and same_decisions(val, kept[mode][1]):
                # a saturated alpha: every validation image halts where it did at the alpha before
                repeats.append(f"`{pid}` (as `{kept[mode][0]}`)")
                continue
            kept[mode] = (pid, val)
            metrics = res.metrics(depth, "test") | val.val_metrics(depth) | {"eval_batch": rec["batch"]}
            params = {"alpha": alpha, "mode": mode}
            if mode == "per-batch":
                params["request_images"] = rec["batch"]
            p = Point(pid, "lac", w, params, metrics)
            points.append(p)
            hist = torch.bincount(res.executed.sum(1), minlength=depth + 1).tolist()
            rows.append(
                [
                    p.id,
                    w,
                    mode,
                    f"{alpha:g}",
                    f"{100 * val.accuracy:.2f}",
                    f"{100 * res.accuracy:.2f}",
                    f"{res.mean_layers:.3f}",
                    f"{res.mean_layers / depth:.3f}",
                    " ".join(map(str, hist)),
                ]
            )
    hv = {
        w: hypervolume(
            objectives([p for p in points if p.weights == w and p.params["mode"] == "per-example"])
        )
        for w in results
    }
    static = {p.weights: p for p in bundle.front if p.method == "static"}
    static_text = "".join(
        f" For reference, point `{static[w].id}` runs every layer of `{w}` at "
        f"{100 * static[w].metrics['accuracy']:.2f}% (n = {static[w].metrics['n']})."
        for w in results
        if w in static
    )
    data_text = f"the full test split ({n} images)" if full else f"the first {n} images of the test split"
    repeat_text = (
        "\n- Left off the front, as the same measurement as the point of the next smaller alpha (every "
        f"validation image halts at the same layer with the same answer): {', '.join(repeats)}."
        if repeats
        else ""
    )
    body = f"""
Command: `{command_line(args.argv)}`

- LAC (L2 Norm Guided Adaptive Computation, `model/lac.py`): no training. Before layer j the norm ‖h_j‖₂ of the residual
  stream (every token and channel, before the final LayerNorm; h_0 = embedding output) gives
  δ_j = ‖h_j‖ − ‖h_(j−1)‖; the image stops if δ_j < λ_j = α·|max Δ − min Δ| over the earlier
  changes Δ = {{0, δ_1, …, δ_(j−1)}} (a buffer that starts at zero, as in the authors' code; λ = 0
  never halts, so the first two layers always run) and is answered by the head from h_j.
- `per-example`: one norm per image, evaluated in batches of {args.batch_size} (a row's decision
  reads only that row). `per-batch`: one norm for the whole batch, which stops together; served one
  request per forward, so its points are measured as requests of **{args.request_images} images**
  (consecutive groups of {args.request_images}), which their ids and params state.
- Data: {data_text}; validation figures (which the choices on the front read) on {
        "the whole" if full else f"the first {n} images of the"
    } validation split.{static_text}
- Environment: {environment()}, device {device}; sweep wall time {elapsed / 60:.1f} min{repeat_text}

Hypervolume of the per-example points (pymoo HV over (mean layers / depth, 1 − accuracy),
reference {HV_REF}): {", ".join(f"`{w}` **{v:.4f}**" for w, v in hv.items())}.

{
        markdown_table(
            [
                "point",
                "weights",
                "mode",
                "alpha",
                "val acc %",
                "test acc %",
                "mean layers",
                "rel. compute",
                f"test images by layers run (0..{depth})",
            ],
            rows,
        )
    }
"""
    swept = set(results)
    publish(
        bundle,
        "lac",
        lambda *_: body,
        points,
        replaces=lambda p: p.method == "lac" and p.weights in swept,
        fronts=True,
    )
    print(f"wrote {len(points)} LAC points into {bundle.root}")
    for p in points:
        print(
            f"  {p.id}: test accuracy {100 * p.metrics['accuracy']:.2f}% at {p.metrics['mean_layers']:.3f} layers"
        )
