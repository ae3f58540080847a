"""``BatchRunner``: what the batcher calls, from a worker thread, to run one batch in the engine.

A process engine heals itself (``service.worker``): a batch whose slice was lost with its engine
process is retried there, once, if that can start before the batch's deadline (the earliest of
its requests', counted from their arrival; without one, ``retry_within_s`` from the batch's
start). Only when it cannot does the batch hear ``EngineGone`` (503 with Retry-After); the server
keeps serving meanwhile.
"""

from __future__ import annotations

import logging
import time

import torch

from skipvit.service.engine import Engine, RowResult
from skipvit.service.knobs import REQUEST_TIMEOUT_S
from skipvit.service.metrics import Metrics
from skipvit.service.worker import EngineGone, EngineProcess

log = logging.getLogger("skipvit.service")


class BatchRunner:
    """Runs a batch in ``engine`` and counts its rows' paths."""

    def __init__(
        self,
        engine: Engine | EngineProcess,
        metrics: Metrics,
        retry_within_s: float = REQUEST_TIMEOUT_S.default,
    ) -> None:
        self.engine, self.metrics, self.retry_within_s = engine, metrics, retry_within_s

    def __call__(
        self, images: torch.Tensor, points: list[str], deadline: float | None = None
    ) -> list[RowResult]:
        """``deadline``: on ``time.monotonic``'s clock, the batcher's."""
        try:
            if isinstance(self.engine, EngineProcess):
                if deadline is None:
                    deadline = time.monotonic() + self.retry_within_s
                rows = self.engine.predict(images, points, deadline)  # (B, C, H, W) -> B rows, in order
            else:
                rows = self.engine.predict(images, points)
        except EngineGone as e:
            log.error("a batch of %d images is answered 503: %s", images.shape[0], e)
            raise
        self.metrics.rows(points, [r.path for r in rows])
        return rows
