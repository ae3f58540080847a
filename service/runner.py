"""``BatchRunner``: what the batcher calls, from a worker thread, to run one batch in the engine."""

from __future__ import annotations

from collections.abc import Callable

import torch

from skipvit.service.engine import Engine, RowResult
from skipvit.service.metrics import Metrics
from skipvit.service.worker import EngineGone, EngineProcess


class BatchRunner:
    """Runs a batch in ``engine`` and counts its rows' paths. An engine that is gone is reported
    to ``on_gone`` (with the reason) before the error goes on to the batch's requests."""

    def __init__(
        self, engine: Engine | EngineProcess, metrics: Metrics, on_gone: Callable[[str], None]
    ) -> None:
        self.engine, self.metrics, self.on_gone = engine, metrics, on_gone

    def __call__(self, images: torch.Tensor, points: list[str]) -> list[RowResult]:
        try:
            rows = self.engine.predict(images, points)  # (B, C, H, W) -> B rows, in order
        except EngineGone as e:
            self.on_gone(str(e))
            raise
        self.metrics.rows(points, [r.path for r in rows])
        return rows
