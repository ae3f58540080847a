"""Turn front points into execution policies. Methods register here as they are built.

``policy_for`` runs one point. ``policy_for_rows`` runs a batch whose rows may come from
different points: points that share a ``batch_key`` differ only in per-row parameters (the gate
thresholds of RL and NSGA points), so their rows share one forward. The service's batcher groups
requests by that key.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch

from model.bundle import Point
from model.gates import GatePolicy, thresholds_tensor
from model.policy import ExecutionPolicy, StaticPolicy
from model.vit import AdaptiveViT

METHODS = ("static", "rl", "nsga", "nsga-joint")
GATE_METHODS = ("rl", "nsga", "nsga-joint")


def _gate_params(point: Point):
    # rl: one threshold per gate (or one for all); nsga: one gene per layer (-1 removes it, else
    # its threshold)
    return point.params.get("thresholds" if point.method == "rl" else "genes", 0.5)


def _agent(point: Point, model: AdaptiveViT):
    if model.agent is None:
        raise ValueError(f"point {point.id!r} needs RL gates, but weight set {point.weights!r} has none")
    return model.agent


def policy_for(point: Point, model: AdaptiveViT) -> ExecutionPolicy:
    """The policy that runs ``point`` on ``model`` (built from the point's weight set)."""
    if point.method == "static":
        return StaticPolicy()
    if point.method in GATE_METHODS:
        return GatePolicy(_agent(point, model), _gate_params(point))
    raise ValueError(f"point {point.id!r} uses method {point.method!r}, which this version cannot run")


def batch_key(point: Point) -> Hashable:
    """Rows of points with equal keys can share one forward pass (``policy_for_rows``)."""
    if point.method in GATE_METHODS:
        return (point.weights, "gates")
    return (point.weights, point.id)


def policy_for_rows(points: Sequence[Point], model: AdaptiveViT) -> ExecutionPolicy:
    """One policy for a batch whose row b is served at ``points[b]``; all share one batch key."""
    if not points:
        raise ValueError("no rows")
    first = points[0]
    if all(p.id == first.id for p in points):
        return policy_for(first, model)
    if len({batch_key(p) for p in points}) != 1:
        raise ValueError(f"points {sorted({p.id for p in points})} cannot share one forward pass")
    depth = model.depth
    per_point = {p.id: thresholds_tensor(_gate_params(p), 1, depth, "cpu")[0] for p in points}  # id -> (L,)
    thresholds = torch.stack([per_point[p.id] for p in points])  # (B, L)
    return GatePolicy(_agent(first, model), thresholds)
