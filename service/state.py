"""What the parts of one app share: ``ServiceState``, the only thing the FastAPI app's state holds
(``app.state.service``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import FastAPI

from skipvit.service.batcher import Batcher
from skipvit.service.budget import DecodeBudget, DecodePool
from skipvit.service.engine import Engine
from skipvit.service.fleet import FleetState
from skipvit.service.looplag import LoopLag
from skipvit.service.metrics import Metrics
from skipvit.service.middleware import Admission
from skipvit.service.pilot import Pilot
from skipvit.service.settings import Settings
from skipvit.service.worker import EngineProcess

if TYPE_CHECKING:
    from skipvit.service.fleetsync import FleetSync

log = logging.getLogger("skipvit.service")


@dataclass(eq=False)
class ServiceState:
    """The settings and the parts made from them; ``engine`` and ``batcher`` appear once the bundle
    is loaded (``service.lifecycle``). Read on the event loop; ``fail`` may come from a worker thread."""

    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    admission: Admission = field(default_factory=Admission)
    loop_lag: LoopLag = field(default_factory=LoopLag)
    decode_pool: DecodePool = field(default_factory=DecodePool)
    decode_budget: DecodeBudget = field(init=False)
    admin_token: str | None = None  # set at startup; until then no admin request passes
    engine: Engine | EngineProcess | None = None
    batcher: Batcher | None = None
    ready: bool = False  # loaded, warmed up and batching: /readyz says 200 unless draining
    load_error: str | None = None  # why the engine cannot serve (load failed, it could not be healed)
    hurried: bool = False  # a second exit signal: shut down without waiting for the engine
    owns_process: bool = False  # `skipvit serve`: process-wide settings (the collector's) are ours
    engine_hung: bool = False  # set at shutdown if the engine never returned a batch
    gave_up: str | None = None  # why the engine processes could not be kept alive: exit non-zero
    stop_server: Callable[[], None] | None = None  # set by `skipvit serve`: drain and shut down
    pilot: Pilot | None = None  # the SLO autopilot, while it is on
    fleet: FleetState | None = None  # the fleet state applied last (None: this replica's own settings)
    fleet_sync: FleetSync | None = None  # asks the peers for a newer fleet state, when there are peers

    def __post_init__(self) -> None:
        self.decode_budget = DecodeBudget(self.settings.decode_budget_mb << 20)

    def fail(self, error: str) -> None:
        """The engine can serve no more: /livez and /readyz fail from now on, so that an
        orchestrator restarts us, and /classify answers 503."""
        self.load_error = error
        self.metrics.ready.set(0)

    def give_up(self, reason: str) -> None:
        """The engine processes cannot be kept alive (from the supervisor's thread): fail, and have
        the server shut down and exit non-zero, so that a restart policy starts it afresh."""
        self.gave_up = reason
        self.fail(reason)
        if self.stop_server is not None:
            log.error("shutting down: the engine could not be healed")
            self.stop_server()

    def capacity(self) -> tuple[int, int] | None:
        """(engine processes serving, engine processes wanted) of a process engine; None otherwise."""
        return self.engine.capacity() if isinstance(self.engine, EngineProcess) else None


def service_state(app: FastAPI) -> ServiceState:
    """The state of an app made by ``create_app``."""
    return app.state.service
