"""The static point of a bundle made by ``skipvit import hf``, measured once data is at hand.

Such a bundle comes with no dataset, so its ``static`` point carries no accuracy. Every command
that writes points compares them with the static point (the report's reference, the fronts
section, ``front.png``), and every choice on the front reads validation figures. So the first
command that reads labelled images for an imported bundle (``--data folder --data-dir DIR``)
measures every unmeasured static point on that data's validation and test splits, as
``train static`` would have, and publishes it with a REPORT section that names the data, before
it does its own work. A later command finds the point measured and leaves it as it is.
"""

from __future__ import annotations

from skipvit.model.bundle import Bundle, Point, load_bundle
from skipvit.model.policy import StaticPolicy
from skipvit.training.data import DataSplits
from skipvit.training.evaluate import evaluate
from skipvit.training.publish import publish
from skipvit.training.report import command_line, environment, markdown_table

SECTION = "static: measured on the given data"


def unmeasured(bundle: Bundle) -> list[Point]:
    """The static points without an accuracy (an imported bundle's, before any data was given)."""
    return [p for p in bundle.front if p.method == "static" and "accuracy" not in p.metrics]


def measure_static(bundle: Bundle, splits: DataSplits, device, args) -> Bundle:
    """``bundle`` with its unmeasured static points measured on ``splits`` and published (the
    bundle as loaded afresh), or ``bundle`` itself when every static point has its figures."""
    todo = unmeasured(bundle)
    if not todo:
        return bundle
    depth = bundle.architecture.depth
    mean, std = bundle.dataset["mean"], bundle.dataset["std"]
    measured, rows = [], []
    for p in todo:
        model = bundle.build_model(p.weights, device)
        val = evaluate(model, splits.val, mean, std, StaticPolicy(), device=device)
        test = evaluate(model, splits.test, mean, std, StaticPolicy(), device=device)
        metrics = p.metrics | test.metrics(depth, "test") | val.val_metrics(depth)
        measured.append(Point(p.id, p.method, p.weights, p.params, metrics))
        rows.append([p.id, p.weights, f"{100 * val.accuracy:.2f}", f"{100 * test.accuracy:.2f}"])
        print(
            f"measured point {p.id!r} of the imported model: test accuracy {100 * test.accuracy:.2f}% "
            f"on {test.n} images (val {100 * val.accuracy:.2f}% on {val.n})"
        )
    body = f"""
Command: `{command_line(getattr(args, "argv", None))}`

The imported model came with no dataset; its static point is measured on the data this command
read: `{splits.info.name}` in `{getattr(args, "data_dir", None)}` (classes in the model's label
order), validation {len(splits.val)} / test {len(splits.test)} images, every layer run.
Environment: {environment()}, device {device}.

{markdown_table(["point", "weights", "val acc %", "test acc %"], rows)}
"""
    publish(bundle, SECTION, lambda *_: body, measured)
    return load_bundle(bundle.root)
