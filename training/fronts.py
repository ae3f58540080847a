"""Fronts of a bundle, one per method, and their hypervolume.

Hypervolume is pymoo's HV over (relative compute, error), both minimised (relative compute is a
point's ``relative_compute``: mean layers / depth for the layer-skipping methods, FLOPs / static
FLOPs where a method adds heads of its own, e.g. DyCE's exits), with reference point (1, 1): the
area a front dominates inside the box where a model runs at most every layer and is at worst always
wrong. A point that runs every layer adds nothing, so the static model's hypervolume is 0 by
construction: the measure counts what a method saves. Fronts are scored on the points' test metrics, so they are a report, never a selection.
"""

from __future__ import annotations

import numpy as np

from skipvit.model.bundle import Bundle, Point
from skipvit.training.report import markdown_table, update_section

HV_REF = (1.0, 1.0)


def objectives(points: list[Point]) -> np.ndarray:
    """(n, 2) array of (relative compute, error) from the points' metrics."""
    return np.array(
        [[p.metrics["relative_compute"], 1.0 - p.metrics["accuracy"]] for p in points], dtype=float
    ).reshape(-1, 2)


def hypervolume(f: np.ndarray) -> float:
    """pymoo's HV of (n, 2) minimised objectives against ``HV_REF`` (0 for an empty set)."""
    from pymoo.indicators.hv import HV

    f = np.asarray(f, dtype=float).reshape(-1, 2)
    if len(f) == 0:
        return 0.0
    return float(HV(ref_point=np.array(HV_REF))(f))


def method_fronts(bundle: Bundle) -> dict[str, list[Point]]:
    fronts: dict[str, list[Point]] = {}
    for p in sorted(bundle.front, key=lambda p: p.metrics["mean_layers"]):
        fronts.setdefault(p.method, []).append(p)
    return fronts


def fronts_table(bundle: Bundle) -> str:
    """One row per method: points, hypervolume, and its cheapest point within 0.5 of static accuracy."""
    static = next((p for p in bundle.front if p.method == "static"), None)
    rows = []
    for method, points in method_fronts(bundle).items():
        near = None
        if static is not None:
            bar = static.metrics["accuracy"] - 0.005
            ok = [p for p in points if p.metrics["accuracy"] >= bar]
            near = min(ok, key=lambda p: p.metrics["relative_compute"], default=None)
        near_text = (
            f"{near.id}: {100 * near.metrics['accuracy']:.2f}% @ {near.metrics['mean_layers']:.2f} layers, "
            f"compute {near.metrics['relative_compute']:.3f}"
            if near
            else "none"
        )
        rows.append([method, len(points), f"{hypervolume(objectives(points)):.4f}", near_text])
    return markdown_table(
        ["method", "points", f"hypervolume (ref {HV_REF})", "least compute within 0.5 pt of static"], rows
    )


def update_fronts_section(bundle: Bundle) -> None:
    body = (
        "Hypervolume of each method's points on the test split: pymoo's HV over (relative compute, "
        f"1 − accuracy), both minimised (relative compute: mean layers / depth, or FLOPs / static FLOPs for "
        f"dyce), reference point {HV_REF}. Full compute adds nothing, so static "
        "scores 0.\n\n" + fronts_table(bundle)
    )
    update_section(bundle.root, "fronts", body)
