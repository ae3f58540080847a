"""The app's life: load the bundle and warm it up (after startup, so that /livez answers meanwhile),
start the batcher, drain on SIGTERM, stop and close at shutdown. Every step reads and writes the
one ``ServiceState``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import torch
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from skipvit.kernels import set_backend
from skipvit.service import gcpause
from skipvit.service.auth import admin_token
from skipvit.service.batcher import Batcher, Knobs
from skipvit.service.budget import return_freed_memory
from skipvit.service.engine import Engine
from skipvit.service.healing import HealPolicy
from skipvit.service.runner import BatchRunner
from skipvit.service.settings import Settings
from skipvit.service.state import ServiceState
from skipvit.service.worker import EngineProcess, layout

log = logging.getLogger("skipvit.service")


def start_engine(settings: Settings, state: ServiceState | None = None) -> Engine | EngineProcess:
    """Load the bundle and warm it up, in child processes (default) or in this one. The child
    processes are kept alive: each replacement is counted in ``state``'s metrics, and if they cannot
    be kept alive the state gives up (``ServiceState.give_up``)."""
    if settings.engine == "process":
        workers, threads = layout(settings.device, settings.engine_workers, settings.torch_threads)
        log.info(
            "engine: %d process%s, %s torch thread%s each",
            workers,
            "es" if workers > 1 else "",
            threads or "default",
            "s" if threads != 1 else "",
        )
        return EngineProcess(
            settings.bundle,
            settings.device,
            settings.top_k,
            threads,
            compact=settings.compact,
            workers=workers,
            policy=HealPolicy(
                heartbeat_timeout_s=settings.engine_heartbeat_timeout_s,
                backoff_s=settings.engine_respawn_backoff_s,
                max_failures=settings.engine_max_respawn_failures,
                slice_timeout_s=settings.engine_slice_timeout_s,
            ),
            on_restart=None if state is None else state.metrics.engine_restarts.inc,
            on_give_up=None if state is None else state.give_up,
        )
    set_backend(settings.compact)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    engine = Engine.from_dir(settings.bundle, settings.device, settings.top_k)
    engine.warm_up()
    return engine


def start_batcher(state: ServiceState, engine: Engine | EngineProcess, active: str) -> Batcher:
    s = state.settings
    batcher = Batcher(
        BatchRunner(engine, state.metrics, retry_within_s=s.request_timeout_s),
        active=active,
        key=engine.batch_key,
        knobs=Knobs(s.max_batch_size, s.max_wait_ms, s.max_queue),
        timeout_s=s.request_timeout_s,
        observer=state.metrics,
        depth=s.pipeline_depth,
    )
    batcher.start()
    return batcher


async def load(state: ServiceState) -> None:
    """Load the bundle, warm up, start the batcher, take the fleet's state from the peers (if any);
    then the state is ready. A failure is kept as ``load_error``: /livez turns 503 with the reason,
    so an orchestrator restarts us."""
    settings, metrics = state.settings, state.metrics
    try:
        engine = await run_in_threadpool(start_engine, settings, state)
        state.engine = engine
        metrics.init_layers(engine.depth)
        active = engine.point(settings.point)
        metrics.set_active(active.id, active.method, active.weights)
        state.batcher = start_batcher(state, engine, active.id)
    except Exception as e:
        state.load_error = f"{type(e).__name__}: {e}"
        log.exception("could not load the bundle %s", settings.bundle)
        return
    if state.owns_process:  # what the load made stays; the collector no longer walks it
        gcpause.settle()
    if settings.fleet_peers:
        from skipvit.service.fleetsync import FleetSync

        state.fleet_sync = FleetSync(state)
        await state.fleet_sync.start_up()
    state.ready = True
    metrics.ready.set(1)
    log.info("serving %s (point %s) on %s", settings.bundle, state.batcher.active, engine.device)
    fleet_pilot = state.fleet is not None and "autopilot" in state.fleet.config
    if settings.autopilot_p95_ms is not None and not fleet_pilot:  # the fleet's state comes first
        start_settings_autopilot(state, engine.bundle, state.batcher.active)
    if state.fleet_sync is not None:
        state.fleet_sync.start()


def start_settings_autopilot(state: ServiceState, bundle, active: str) -> None:
    """Turn the autopilot on as ``SKIPVIT_AUTOPILOT_*`` say; fail the state if it cannot work."""
    from skipvit.service.pilot import pilot_config
    from skipvit.service.routes import start_autopilot

    settings = state.settings
    anchor = settings.autopilot_family or active
    try:
        config = pilot_config(bundle, settings.autopilot_p95_ms, settings.autopilot_min_accuracy, anchor)
    except (ValueError, KeyError) as e:
        state.fail(f"SKIPVIT_AUTOPILOT_*: {e}")
        log.error("the autopilot cannot start: %s", e)
        return
    start_autopilot(state, config)


def drain(state: ServiceState) -> None:
    """The first step of a drain: /readyz and any new /classify answer 503 from now on, and what is
    queued runs at once. The server (``service.main``) then stops accepting connections and waits
    for every admitted request's answer; the shutdown stops the batcher after."""
    state.admission.draining = True
    state.metrics.ready.set(0)
    if state.batcher is not None:
        state.batcher.flush()
    log.info("draining: %d requests in flight", state.admission.inflight)


def hurry(state: ServiceState) -> None:
    """A second exit signal: the shutdown that follows gives the engine no time to finish a batch
    (its requests hear 503, and `skipvit serve` exits 1)."""
    state.hurried = True


async def shutdown(state: ServiceState, loading: asyncio.Task) -> None:
    """Stop loading, stop the batcher (bounded by ``drain_timeout_s``), close the engine."""
    if state.admission.draining:
        if state.admission.inflight == 0:
            log.info("drained: every admitted request answered")
        else:  # uvicorn's graceful time ran out: those it cancelled are answered 503
            log.warning("drain timed out: %d requests in flight answered 503", state.admission.inflight)
    state.ready = False
    state.metrics.ready.set(0)
    if state.pilot is not None:
        state.pilot.cancel()
    if state.fleet_sync is not None:
        state.fleet_sync.cancel()
    loading.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await loading
    timeout = 0.0 if state.hurried else state.settings.drain_timeout_s
    if state.batcher is not None and not await state.batcher.stop(timeout=timeout):
        # The engine held a batch past the drain's bound (hung): its requests heard 503. A process
        # engine is ended below; a thread cannot be, and `skipvit serve` exits 1 without waiting
        # for it (``engine_hung``).
        log.warning("the engine did not finish its batch within %g s; giving up on it", timeout)
        state.engine_hung = True
    state.decode_pool.close()
    if state.engine is not None:
        await run_in_threadpool(state.engine.close)


def lifespan(state: ServiceState) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's lifespan: the admin token, then the load in the background (the app serves
    /livez meanwhile); at shutdown, ``shutdown``."""

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        settings = state.settings
        state.metrics.ready.set(0)
        token = settings.admin_token.get_secret_value() if settings.admin_token else None
        state.admin_token = admin_token(token, settings.admin_token_file)
        state.loop_lag.start()
        pauses = gcpause.GcPauses(state.metrics.gc_pause)
        pauses.start()
        return_freed_memory()
        state.metrics.loop_lag.set_function(lambda: state.loop_lag.lag)
        loading = asyncio.create_task(load(state), name="skipvit-load")
        try:
            yield
        finally:
            state.loop_lag.stop()
            pauses.stop()
            await shutdown(state, loading)

    return run
