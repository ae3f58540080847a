"""Turn front points into execution policies. Methods register here as they are built.

``policy_for`` runs one point. ``policy_for_rows`` runs a batch whose rows may come from
different points: points that share a ``batch_key`` differ only in per-row parameters (the gate
thresholds of RL and NSGA points, the alpha of per-example LAC points), so their rows share one
forward. The service's batcher groups requests by that key; a key of ``None`` (per-batch LAC, whose
rows halt together on the norm of the whole batch) means the request runs in a forward of its own,
so that its answer never depends on other requests. DyCE points keep the default key
``(weights, point id)``: one point per forward (its exits and thresholds apply to every row).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch

from skipvit.model.bundle import Point
from skipvit.model.dyce import DyCEConfig, DyCEPolicy
from skipvit.model.exits import exits_of
from skipvit.model.gates import GatePolicy, thresholds_tensor
from skipvit.model.lac import LACPolicy, check_alpha, check_mode
from skipvit.model.policy import ExecutionPolicy, StaticPolicy
from skipvit.model.vit import AdaptiveViT

GATE_METHODS = ("rl", "nsga", "nsga-joint")


def _gate_params(point: Point):
    # rl: one threshold per gate (or one for all); nsga: one gene per layer (-1 removes it, else
    # its threshold)
    return point.params.get("thresholds" if point.method == "rl" else "genes", 0.5)


def _lac_params(point: Point) -> tuple[float, str]:
    try:
        return check_alpha(point.params["alpha"]), check_mode(point.params.get("mode", "per-example"))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"point {point.id!r}: bad LAC params {point.params!r} ({e})") from None


def _agent(point: Point, model: AdaptiveViT):
    if model.agent is None:
        raise ValueError(f"point {point.id!r} needs RL gates, but weight set {point.weights!r} has none")
    return model.agent


def _exits(point: Point, model: AdaptiveViT):
    exits = exits_of(model)
    if exits is None:
        raise ValueError(
            f"point {point.id!r} needs exit heads, but weight set {point.weights!r} has none; "
            "Hint: run `skipvit train exits` and `skipvit search dyce`"
        )
    return exits


def policy_for(point: Point, model: AdaptiveViT) -> ExecutionPolicy:
    """The policy that runs ``point`` on ``model`` (built from the point's weight set)."""
    if point.method == "static":
        return StaticPolicy()
    if point.method in GATE_METHODS:
        return GatePolicy(_agent(point, model), _gate_params(point))
    if point.method == "lac":
        return LACPolicy(*_lac_params(point))
    if point.method == "dyce":
        return DyCEPolicy(_exits(point, model), DyCEConfig.from_params(point.params))
    raise ValueError(f"point {point.id!r} uses method {point.method!r}, which this version cannot run")


def batch_key(point: Point) -> Hashable | None:
    """Rows of points with equal keys can share one forward pass (``policy_for_rows``); None: the
    point's requests each run alone (one request per forward)."""
    if point.method in GATE_METHODS:
        return (point.weights, "gates")
    if point.method == "lac":
        return None if _lac_params(point)[1] == "per-batch" else (point.weights, "lac-per-example")
    return (point.weights, point.id)


def policy_for_rows(points: Sequence[Point], model: AdaptiveViT) -> ExecutionPolicy:
    """One policy for a batch whose row b is served at ``points[b]``; all share one batch key."""
    if not points:
        raise ValueError("no rows")
    first = points[0]
    if all(p.id == first.id for p in points):
        return policy_for(first, model)
    keys = {batch_key(p) for p in points}
    if len(keys) != 1 or None in keys:
        raise ValueError(f"points {sorted({p.id for p in points})} cannot share one forward pass")
    if first.method == "lac":  # per-example LAC: one alpha per row
        return LACPolicy([_lac_params(p)[0] for p in points], "per-example")
    depth = model.depth
    per_point = {p.id: thresholds_tensor(_gate_params(p), 1, depth, "cpu")[0] for p in points}  # id -> (L,)
    thresholds = torch.stack([per_point[p.id] for p in points])  # (B, L)
    return GatePolicy(_agent(first, model), thresholds)
