"""The bundle's front as the API shows it (``GET /pareto``, the web page): what each point does
and how the server batches it; and the answer to a point id that is not on the front."""

from __future__ import annotations

from skipvit.model.bundle import Point
from skipvit.model.points import batch_key
from skipvit.service.echo import echo
from skipvit.service.engine import BundleView
from skipvit.service.failures import UNKNOWN_POINT, Failure
from skipvit.service.schemas import PointOut

METHOD_TEXT = {
    "static": "every image runs every layer",
    "rl": "RL gates decide per image which layers run",
    "nsga": "RL gates with per-layer thresholds found by NSGA-II (-1 removes a layer)",
    "nsga-joint": "joint RL-NSGA: gates and thresholds searched together",
    "lac": "LAC: an image stops when the L2 norm of its hidden state stops growing (alpha sets how soon)",
    "dyce": "DyCE: exit heads after chosen layers; an image leaves at the first exit whose max softmax "
    "exceeds its threshold",
}


def describe(point: Point) -> str:
    """What a point does (shown by /pareto and the web page)."""
    text = METHOD_TEXT.get(point.method, point.method)
    if point.method == "lac":
        alpha, mode = point.params.get("alpha"), point.params.get("mode", "per-example")
        who = "the request's images halt together" if mode == "per-batch" else "each image halts on its own"
        text += f"; {mode}, alpha {alpha}: {who}"
        if mode == "per-batch" and "request_images" in point.params:
            text += f" (measured on requests of {point.params['request_images']} images)"
    return text


def serving(point: Point, front: list[Point]) -> str:
    """How the server batches a point: read off its batch key (``model.points.batch_key``)."""
    key = batch_key(point)
    if key is None:
        return (
            "one request per forward, started at once: the request's own images are the batch, "
            "never other requests'"
        )
    peers = sum(1 for p in front if p.id != point.id and batch_key(p) == key)
    if peers:
        return f"batched per image: shares one forward with {peers} other points of weights {point.weights!r}"
    return "batched per image with the requests of the same point"


def points_out(engine: BundleView, active: str) -> list[PointOut]:
    """Every point of the front, in order, as ``GET /pareto`` lists it."""
    front = engine.bundle.front
    return [
        PointOut(**p.to_dict(), description=describe(p), active=p.id == active, serving=serving(p, front))
        for p in front
    ]


def check_point(engine: BundleView, point_id: str) -> None:
    """``Failure`` (404) if ``point_id`` is not on the bundle's front."""
    try:
        engine.point(point_id)
    except KeyError:
        known = ", ".join(p.id for p in engine.bundle.front)
        raise Failure(
            UNKNOWN_POINT, f"unknown point {echo(point_id)!r}; known points: {known} (see GET /pareto)"
        ) from None
