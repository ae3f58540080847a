"""One replica's part in the fleet: ``PUT /fleet`` (a broadcast from ``skipvit fleet set``), and
``FleetSync``, which pulls the fleet state from the peers (``SKIPVIT_FLEET_PEERS``).

The rules (which state, what to apply) are ``service.fleet``'s; this module moves the states. A
state is applied by ``apply_config``, the path of ``PUT /config``, so it is checked the same way
and nothing of a refused one applies; the replica then holds it (``ServiceState.fleet``) and shows
it in ``GET /config`` (``fleet``), where its peers read it: reading needs no token, as GET /config
never did, and a replica applies what it pulled itself, without an HTTP write.

``FleetSync``:

- ``start_up``: once the bundle is loaded and before ``/readyz`` says ready, ask every peer (one
  try, bounded by ``SKIPVIT_FLEET_TIMEOUT_S`` for the names and again for the answers) and apply
  the newest state: a replica that starts later, or again, serves the fleet's point from its first
  request. No answer (the first replica, or every replica starting at once): its own settings.
- ``run``: every ``SKIPVIT_FLEET_SYNC_S``, the same; a replica that a broadcast missed (not yet in
  the Service's DNS, a lost connection) catches up within ``sync_s + 2 * timeout_s``.
- A state that fails to apply here (a point this replica's bundle lacks) is logged once and not
  tried again; a newer one is.

Asking itself (it is among the peers) is harmless: before it is ready its ``GET /config`` is 503,
after it holds what it holds.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Depends

from skipvit.service import fleet, peers
from skipvit.service.batcher import Batcher
from skipvit.service.failures import FLEET_STALE, Failure
from skipvit.service.fleet import FleetState
from skipvit.service.routes import State, admin_body, apply_config, body_doc, config_of, ready_batcher
from skipvit.service.schemas import ConfigResponse, ConfigUpdate, FleetUpdate
from skipvit.service.state import ServiceState

log = logging.getLogger("skipvit.service")
router = APIRouter()
Via = Literal["put", "start", "sync"]


@router.put("/fleet", response_model=ConfigResponse, openapi_extra=body_doc(FleetUpdate))
async def put_fleet(
    update: Annotated[FleetUpdate, Depends(admin_body(FleetUpdate))], state: State
) -> ConfigResponse:
    """Apply a fleet state (``skipvit fleet set`` sends it to every replica): as PUT /config would
    apply its ``config``, if it is newer than the one this replica holds; the same one again changes
    nothing; an older one is 409."""
    batcher = ready_batcher(state)
    offered = FleetState(
        update.generation, update.config.model_dump(exclude_unset=True), update.set_at, update.set_by
    )
    match fleet.verdict(state.fleet, offered):
        case "older":
            assert state.fleet is not None
            raise Failure(
                FLEET_STALE,
                f"fleet generation {offered.generation} is older than the one this replica holds "
                f"({state.fleet.generation}, set by {state.fleet.set_by or '?'}); "
                "Hint: run skipvit fleet set again: it picks the next generation",
            )
        case "adopt":
            adopt(state, batcher, offered, "put")
    return config_of(state, batcher)


def adopt(state: ServiceState, batcher: Batcher, offered: FleetState, via: Via) -> None:
    """Apply ``offered`` (``Failure`` if it cannot be: then nothing of it applies) and hold it."""
    running = None if state.pilot is None else state.pilot.status()
    update = fleet.to_apply(offered.config, running)
    if update:
        apply_config(state, batcher, ConfigUpdate.model_validate(update))
    state.fleet = offered
    state.metrics.fleet_generation.set(offered.generation)
    state.metrics.fleet_adopted.labels(via).inc()
    log.info(
        "fleet: generation %d (set by %s) applied, via %s: %s",
        offered.generation,
        offered.set_by or "?",
        via,
        update or "nothing to change",
    )


class FleetSync:
    """Pulls the newest fleet state from the peers of ``state`` (module docstring)."""

    def __init__(self, state: ServiceState) -> None:
        settings = state.settings
        self.state = state
        self.peers = fleet.parse_peers(settings.fleet_peers)
        self.interval_s, self.timeout_s = settings.fleet_sync_s, settings.fleet_timeout_s
        self.refused: set[fleet.Key] = set()  # states that failed to apply here
        self._task: asyncio.Task | None = None

    async def offered(self) -> list[FleetState | None]:
        """The fleet states the peers hold now (one try each; no answer: left out)."""
        addrs, missing = await asyncio.wait_for(asyncio.to_thread(peers.resolve, self.peers), self.timeout_s)
        if missing:
            log.debug("fleet: peers that resolve to no address: %s", ", ".join(missing))
        replies = await asyncio.to_thread(peers.call_all, addrs, "GET", "/config", self.timeout_s)
        bodies = [r.body for r in replies.values() if r.ok and isinstance(r.body, dict)]
        return [FleetState.from_json(b.get("fleet")) for b in bodies]

    async def sync(self, via: Via) -> bool:
        """Ask the peers; adopt the newest state newer than ours. True if one was adopted."""
        state = self.state
        try:
            offered = await self.offered()
        except (TimeoutError, OSError) as e:
            log.debug("fleet: the peers could not be asked: %s", e)
            return False
        chosen = fleet.pick(state.fleet, offered, self.refused)
        if chosen is None or state.batcher is None or state.engine is None:
            return False
        try:
            adopt(state, state.batcher, chosen, via)
        except (Failure, ValueError) as e:  # refused here, or a config that does not validate
            self.refused.add(chosen.key())
            log.warning("fleet: generation %d cannot be applied here: %s", chosen.generation, e)
            return False
        return True

    async def start_up(self) -> bool:
        """``sync`` once, before the replica is ready; True if a state was adopted."""
        try:
            return await asyncio.wait_for(self.sync("start"), 2 * self.timeout_s + 0.5)
        except TimeoutError:
            log.warning("fleet: no peer answered in time; starting on this replica's own settings")
        except Exception:  # never keeps the replica from starting
            log.exception("fleet: the sync at start failed; starting on this replica's own settings")
        return False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="skipvit-fleet-sync")

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.sync("sync")
            except Exception:  # the next round tries again; the operator sees why in the log
                log.exception("fleet: the sync with the peers failed")
