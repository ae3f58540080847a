"""Turn a front point into an execution policy. Methods register here as they are built."""

from __future__ import annotations

from model.bundle import Point
from model.policy import ExecutionPolicy, StaticPolicy

METHODS = ("static",)


def policy_for(point: Point) -> ExecutionPolicy:
    if point.method == "static":
        return StaticPolicy()
    raise ValueError(f"point {point.id!r} uses method {point.method!r}, which this version cannot run")
