"""Fronts of a bundle, one per method: their hypervolume, and each method's cheapest point that
validation puts within 0.5 points of static.

Hypervolume is pymoo's HV over (relative compute, error), both minimised (relative compute is a
point's ``relative_compute``: mean layers / depth for the layer-skipping methods, FLOPs / static
FLOPs where a method adds heads of its own, e.g. DyCE's exits), with reference point (1, 1): the
area a front dominates inside the box where a model runs at most every layer and is at worst always
wrong. A point that runs every layer adds nothing, so the static model's hypervolume is 0 by
construction: the measure counts what a method saves. Over the whole box, one degenerate point (no
layer run, chance accuracy) can decide an ordering, so each front is also scored inside a window:
errors at most ``WINDOW`` above static's (reference point (1, static error + ``WINDOW``)).

Every choice reads validation figures (``val_accuracy``, ``val_relative_compute``): the orderings by
hypervolume and the "within 0.5 pt" pick. Test figures, with their 95% interval, are reported beside
them and decide nothing. A point without validation figures takes part in no choice.
"""

from __future__ import annotations

import numpy as np

from skipvit.model.bundle import Bundle, Point
from skipvit.training.report import markdown_table, update_section

HV_REF = (1.0, 1.0)
WINDOW = 0.10  # the hypervolume window: errors up to static's + 10 points
NEAR = 0.005  # "within 0.5 points of static"


def objectives(points: list[Point]) -> np.ndarray:
    """(n, 2) array of (relative compute, error) from the points' metrics."""
    return np.array(
        [[p.metrics["relative_compute"], 1.0 - p.metrics["accuracy"]] for p in points], dtype=float
    ).reshape(-1, 2)


def hypervolume(f: np.ndarray, ref: tuple[float, float] = HV_REF) -> float:
    """pymoo's HV of (n, 2) minimised objectives against ``ref``; points that do not dominate it add
    nothing (0 for an empty set)."""
    from pymoo.indicators.hv import HV

    f = np.asarray(f, dtype=float).reshape(-1, 2)
    f = f[(f < np.array(ref)).all(axis=1)]
    return float(HV(ref_point=np.array(ref))(f)) if len(f) else 0.0


def method_fronts(bundle: Bundle) -> dict[str, list[Point]]:
    fronts: dict[str, list[Point]] = {}
    for p in sorted(bundle.front, key=lambda p: p.metrics["mean_layers"]):
        fronts.setdefault(p.method, []).append(p)
    return fronts


def val_objectives(points: list[Point]) -> np.ndarray:
    """(n, 2) array of (relative compute, error) on the validation split, for the points that have it."""
    rows = [
        [p.metrics["val_relative_compute"], 1.0 - p.metrics["val_accuracy"]]
        for p in points
        if "val_accuracy" in p.metrics and "val_relative_compute" in p.metrics
    ]
    return np.array(rows, dtype=float).reshape(-1, 2)


def window_hypervolume(f: np.ndarray, static_error: float) -> float:
    """HV inside the window of errors at most ``WINDOW`` above static's: points outside add nothing."""
    return hypervolume(f, (HV_REF[0], min(HV_REF[1], static_error + WINDOW)))


def near_static(points: list[Point], static: Point | None) -> Point | None:
    """The point of least validation compute whose validation accuracy is within ``NEAR`` of static's."""
    if static is None or "val_accuracy" not in static.metrics:
        return None
    bar = static.metrics["val_accuracy"] - NEAR
    ok = [
        p for p in points if "val_relative_compute" in p.metrics and p.metrics.get("val_accuracy", -1) >= bar
    ]
    return min(ok, key=lambda p: p.metrics["val_relative_compute"], default=None)


def _test_text(p: Point, static: Point) -> str:
    m, low_high = p.metrics, p.metrics.get("accuracy_ci95")
    ci = f" [{100 * low_high[0]:.2f}, {100 * low_high[1]:.2f}]" if low_high else ""
    delta = 100 * (m["accuracy"] - static.metrics["accuracy"])
    return (
        f"{p.id}: val {100 * m['val_accuracy']:.2f}% @ compute {m['val_relative_compute']:.3f}; "
        f"test {100 * m['accuracy']:.2f}%{ci} ({delta:+.2f} pt vs static) @ {m['mean_layers']:.2f} layers"
    )


def fronts_table(bundle: Bundle) -> str:
    """One row per method: points, hypervolumes (validation and test, whole box and window), and its
    cheapest point within 0.5 points of static on validation, with that point's test figures."""
    static = next((p for p in bundle.front if p.method == "static"), None)
    static_val = 1.0 - static.metrics["val_accuracy"] if static and "val_accuracy" in static.metrics else None
    static_test = 1.0 - static.metrics["accuracy"] if static else 1.0
    rows = []
    for method, points in method_fronts(bundle).items():
        val = val_objectives(points)
        hv_val = (
            f"{hypervolume(val):.4f} / {window_hypervolume(val, static_val):.4f}"
            if len(val) and static_val is not None
            else "n/a"
        )
        test = objectives(points)
        hv_test = f"{hypervolume(test):.4f} / {window_hypervolume(test, static_test):.4f}"
        near = near_static(points, static)
        rows.append([method, len(points), hv_val, hv_test, _test_text(near, static) if near else "none"])
    header = [
        "method",
        "points",
        "HV val (box / window)",
        "HV test (box / window)",
        "least validation compute within 0.5 pt of static on validation (test figures, 95% interval)",
    ]
    return markdown_table(header, rows)


def update_fronts_section(bundle: Bundle) -> None:
    body = (
        "Hypervolume of each method's points: pymoo's HV over (relative compute, 1 − accuracy), both "
        f"minimised (relative compute: mean layers / depth, or FLOPs / static FLOPs for dyce), over the "
        f"whole box (reference point {HV_REF}) and over the window of errors at most {100 * WINDOW:.0f} "
        "points above static's. Full compute adds nothing, so static scores 0. Orderings and the "
        "pick read the validation columns; test figures are reported, not chosen on. A point without "
        "validation figures takes part in no choice.\n\n" + fronts_table(bundle)
    )
    update_section(bundle.root, "fronts", body)
