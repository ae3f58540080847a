"""The FastAPI routes: probes, metrics, the front, the config, the web page. (``POST /classify``, the
hot one, is a plain ASGI app: ``service.classify``.)

Each route takes what it needs as a typed dependency: the ``ServiceState``, a batcher that is
ready (503 until the bundle is loaded), the admin token check. Failures are raised as
``service.failures.Failure`` and answered there.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ValidationError

from skipvit.service.auth import ADMIN_BEARER, bearer_ok
from skipvit.service.batcher import Batcher
from skipvit.service.failures import AUTOPILOT_CONFLICT, BAD_CONFIG, NOT_READY, UNAUTHORIZED, Failure
from skipvit.service.knobs import waits_past_timeout
from skipvit.service.pareto import check_point, points_out
from skipvit.service.pilot import Pilot, PilotConfig, pilot_config
from skipvit.service.schemas import (
    AutopilotStatus,
    ConfigResponse,
    ConfigUpdate,
    FleetStatus,
    LivezResponse,
    ParetoResponse,
    ReadyzResponse,
)
from skipvit.service.state import ServiceState

log = logging.getLogger("skipvit.service")
M = TypeVar("M", bound=BaseModel)
STATIC = Path(__file__).parent / "static"


def state_of(request: Request) -> ServiceState:
    return request.app.state.service


State = Annotated[ServiceState, Depends(state_of)]


def require_admin(authorization: Annotated[str | None, Depends(ADMIN_BEARER)], state: State) -> None:
    """401 unless the request carries the admin token (none is set before startup: nothing passes)."""
    token = state.admin_token
    if not token or not bearer_ok(authorization, token):
        raise Failure(UNAUTHORIZED)


def admin_body(model: type[M]) -> Callable[..., Awaitable[M]]:
    """A dependency that reads the body as ``model``, only once the admin token is checked: an
    unauthenticated request is 401 whatever its body (FastAPI would parse a declared body first)."""

    async def read(request: Request, _: Annotated[None, Depends(require_admin)]) -> M:
        try:
            return model.model_validate_json(await request.body())
        except ValidationError as e:
            raise RequestValidationError(
                [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
            ) from None

    return read


admin_update = admin_body(ConfigUpdate)  # the body of PUT /config


def ready_batcher(state: State) -> Batcher:
    """The batcher, once the bundle is loaded; 503 until then."""
    if not state.ready or state.batcher is None:
        raise Failure(NOT_READY)
    return state.batcher


ReadyBatcher = Annotated[Batcher, Depends(ready_batcher)]
router = APIRouter()


LIVEZ_503 = {"model": LivezResponse, "description": "the bundle failed to load, or the engine process exited"}
READYZ_503 = {
    "model": ReadyzResponse,
    "description": "not ready: loading, draining, failed, or healing (an engine process is being replaced)",
}


@router.get("/livez", responses={200: {"model": LivezResponse}, 503: LIVEZ_503})
async def livez(state: State) -> JSONResponse:
    if state.load_error:
        return JSONResponse(status_code=503, content={"status": "failed", "error": state.load_error})
    return JSONResponse(content={"status": "alive"})


@router.get("/readyz", responses={200: {"model": ReadyzResponse}, 503: READYZ_503})
async def readyz(state: State) -> JSONResponse:
    """503 while loading, draining, failed, or healing: an engine process is being replaced."""
    draining = state.admission.draining
    capacity = state.capacity() if state.ready else None
    healing = capacity is not None and capacity[0] < capacity[1] and not state.load_error
    ready = state.ready and not draining and not state.load_error and not healing
    body: dict = {"ready": ready, "draining": draining}
    if healing:
        body.update(status="healing", engine_processes={"serving": capacity[0], "wanted": capacity[1]})
    if state.load_error:
        body["error"] = state.load_error
    return JSONResponse(status_code=200 if ready else 503, content=body)


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(state: State) -> Response:  # the batcher keeps the queue gauge current
    data, content_type = state.metrics.exposition()
    return Response(data, media_type=content_type)


@router.get("/pareto", response_model=ParetoResponse)
async def pareto(state: State, batcher: ReadyBatcher) -> ParetoResponse:
    assert state.engine is not None  # loaded, as the batcher is ready
    family = list(state.pilot.config.family) if state.pilot is not None else None
    return ParetoResponse(
        active=batcher.active, points=points_out(state.engine, batcher.active), autopilot_family=family
    )


@router.get("/config", response_model=ConfigResponse)
async def get_config(state: State, batcher: ReadyBatcher) -> ConfigResponse:
    return config_of(state, batcher)


def inlined(schema: dict) -> dict:
    """A pydantic JSON schema with its ``$defs`` put in place of their ``$ref``s (the operation's
    schema stands alone in OpenAPI, where ``#/$defs/...`` resolves to nothing)."""
    defs = schema.pop("$defs", {})

    def walk(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(dict(defs[ref.removeprefix("#/$defs/")]))
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


def body_doc(model: type[BaseModel]) -> dict:
    """The request body that ``admin_body(model)`` reads, for the docs (``openapi_extra``)."""
    schema = inlined(model.model_json_schema())
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


CONFIG_BODY = body_doc(ConfigUpdate)


@router.put("/config", response_model=ConfigResponse, openapi_extra=CONFIG_BODY)
async def put_config(update: Annotated[ConfigUpdate, Depends(admin_update)], state: State) -> ConfigResponse:
    """Switch the active point, change the batching knobs and/or turn the SLO autopilot on or off;
    applies between batches."""
    batcher = ready_batcher(state)  # here, not a dependency: a malformed body is 422 even while loading
    apply_config(state, batcher, update)
    return config_of(state, batcher)


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


def config_of(state: ServiceState, batcher: Batcher) -> ConfigResponse:
    return ConfigResponse(
        point=batcher.active,
        max_batch_size=batcher.knobs.max_batch_size,
        max_wait_ms=batcher.knobs.max_wait_ms,
        max_queue=batcher.knobs.max_queue,
        request_timeout_s=batcher.timeout_s,
        autopilot=None if state.pilot is None else AutopilotStatus(**state.pilot.status()),
        fleet=None if state.fleet is None else FleetStatus(**state.fleet.to_json()),
    )


def switch_point(state: ServiceState, point_id: str) -> None:
    """Serve requests without ``?point=`` at ``point_id`` from the next batch planned on."""
    assert state.engine is not None and state.batcher is not None
    p = state.engine.point(point_id)
    state.batcher.set_active(p.id)  # on the event loop, so never inside a batch being planned
    state.metrics.switches.inc()
    state.metrics.set_active(p.id, p.method, p.weights)


def start_autopilot(state: ServiceState, config: PilotConfig) -> None:
    """Turn the autopilot on with ``config`` (replacing a running one)."""
    assert state.engine is not None and state.batcher is not None
    stop_autopilot(state)
    batcher = state.batcher
    pilot = Pilot(config, state.engine.bundle, batcher, lambda p: switch_point(state, p), state.metrics)
    batcher.on_submitted, batcher.on_computed = pilot.submitted, pilot.computed
    state.pilot = pilot
    state.metrics.autopilot_enabled(config.target.p95_s)
    pilot.start()
    log.info("autopilot on: p95 <= %g ms, family %s", 1000 * config.target.p95_s, ", ".join(config.family))


def stop_autopilot(state: ServiceState) -> None:
    """Turn the autopilot off; the active point stays where it was."""
    pilot, state.pilot = state.pilot, None
    if pilot is None:
        return
    pilot.cancel()
    if state.batcher is not None:
        state.batcher.on_submitted = state.batcher.on_computed = None
    state.metrics.autopilot_enabled(None)
    log.info("autopilot off; active point %s", state.batcher.active if state.batcher else "?")


def apply_config(state: ServiceState, batcher: Batcher, update: ConfigUpdate) -> None:
    """Check the whole update, then apply it: nothing of a refused update applies."""
    assert state.engine is not None  # loaded, as the batcher is ready
    if update.point is not None:
        check_point(state.engine, update.point)
    pilot = None
    if update.autopilot is not None:
        anchor = update.autopilot.family or update.point or batcher.active
        check_point(state.engine, anchor)
        try:
            pilot = pilot_config(
                state.engine.bundle, update.autopilot.p95_ms, update.autopilot.min_accuracy, anchor
            )
        except ValueError as e:
            raise Failure(AUTOPILOT_CONFLICT, str(e)) from None
    if update.point is not None and state.pilot is not None and not update.autopilot_given:
        raise Failure(AUTOPILOT_CONFLICT)
    knobs = batcher.knobs.update(
        max_batch_size=update.max_batch_size, max_wait_ms=update.max_wait_ms, max_queue=update.max_queue
    )
    if waits_past_timeout(knobs.max_wait_ms, batcher.timeout_s):
        raise Failure(
            BAD_CONFIG,
            f"max_wait_ms {knobs.max_wait_ms:g} is not below the request timeout ({batcher.timeout_s:g} s, "
            "SKIPVIT_REQUEST_TIMEOUT_S): every request that waits for company would time out; "
            "Hint: choose a shorter wait",
        )
    if update.autopilot_given and update.autopilot is None:
        stop_autopilot(state)
    if update.point is not None and update.point != batcher.active:
        switch_point(state, update.point)
        log.info("active point: %s", update.point)
    if knobs != batcher.knobs:
        batcher.set_knobs(knobs)
        log.info("batching knobs: %s", knobs)
    if pilot is not None:  # last: it starts from the point and knobs just set
        start_autopilot(state, pilot)
