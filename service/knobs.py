"""The batching knobs and their bounds, defined once.

``Settings`` (``SKIPVIT_*``), the ``PUT /config`` schema and the batcher's ``Knobs`` all read the
ranges below, so a value one of them takes is a value the others take. Pure: no pydantic here;
``Bound.constraints`` gives the keywords of a pydantic ``Field``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class Bound:
    """The default and the range of one setting: ``ge`` or ``gt`` below, ``le`` above (None: open)."""

    default: int | float
    ge: int | float | None = None
    gt: int | float | None = None
    le: int | float | None = None

    def constraints(self) -> dict[str, int | float]:
        """The bounds as keywords of a pydantic ``Field`` (``ge``, ``gt``, ``le``)."""
        named = {"ge": self.ge, "gt": self.gt, "le": self.le}
        return {k: v for k, v in named.items() if v is not None}

    def holds(self, value: float) -> bool:
        return (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
        )

    def check(self, name: str, value: float) -> None:
        """``ValueError`` naming the range if ``value`` is outside it."""
        if not self.holds(value):
            low = f">= {self.ge}" if self.ge is not None else f"> {self.gt}" if self.gt is not None else ""
            high = f"<= {self.le}" if self.le is not None else ""
            raise ValueError(f"{name} must be {' and '.join(p for p in (low, high) if p)}, got {value!r}")


MAX_BATCH_SIZE = Bound(32, ge=1, le=4096)  # images in one forward
MAX_WAIT_MS = Bound(5.0, ge=0, le=10_000)  # longest a request waits for company
MAX_QUEUE = Bound(256, ge=1, le=1_000_000)  # images waiting; beyond it new requests get QueueFull
REQUEST_TIMEOUT_S = Bound(30.0, gt=0)  # a request not started by then is answered 504
PIPELINE_DEPTH = Bound(2, ge=1, le=8)  # batches handed to the engine at once


def waits_past_timeout(max_wait_ms: float, timeout_s: float) -> bool:
    """True if a request that waits ``max_wait_ms`` for company would time out first."""
    return max_wait_ms >= 1000 * timeout_s


@dataclass(frozen=True)
class Knobs:
    """What ``PUT /config`` may change at runtime; the batcher plans with it."""

    max_batch_size: int = MAX_BATCH_SIZE.default
    max_wait_ms: float = MAX_WAIT_MS.default
    max_queue: int = MAX_QUEUE.default

    def __post_init__(self) -> None:
        for f in fields(self):
            BOUNDS[f.name].check(f.name, getattr(self, f.name))

    def update(self, **changes: Any) -> Knobs:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


BOUNDS = {"max_batch_size": MAX_BATCH_SIZE, "max_wait_ms": MAX_WAIT_MS, "max_queue": MAX_QUEUE}
