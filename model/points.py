"""Turn a front point into an execution policy. Methods register here as they are built."""

from __future__ import annotations

from model.bundle import Point
from model.gates import GatePolicy
from model.policy import ExecutionPolicy, StaticPolicy
from model.vit import AdaptiveViT

METHODS = ("static", "rl", "nsga", "nsga-joint")


def policy_for(point: Point, model: AdaptiveViT) -> ExecutionPolicy:
    """The policy that runs ``point`` on ``model`` (built from the point's weight set)."""
    if point.method == "static":
        return StaticPolicy()
    if point.method in ("rl", "nsga", "nsga-joint"):
        if model.agent is None:
            raise ValueError(f"point {point.id!r} needs RL gates, but weight set {point.weights!r} has none")
        # rl: one threshold per gate; nsga: one gene per layer (-1 removes it, else its threshold)
        return GatePolicy(
            model.agent, point.params.get("thresholds" if point.method == "rl" else "genes", 0.5)
        )
    raise ValueError(f"point {point.id!r} uses method {point.method!r}, which this version cannot run")
