"""FastAPI app factory. The bundle is loaded in the lifespan, never at import.

The routes only wire the parts together and map errors to status codes; the hot one,
``POST /classify``, is a plain ASGI app (``service.classify``) that ``ServiceMiddleware`` routes to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from skipvit.kernels import set_backend
from skipvit.model.points import batch_key
from skipvit.service.auth import admin_token, bearer_ok
from skipvit.service.batcher import Batcher, Knobs
from skipvit.service.classify import NOT_READY, Classify, document, unknown_point
from skipvit.service.engine import BundleView, Engine, RowResult
from skipvit.service.metrics import Metrics
from skipvit.service.middleware import Admission, ServiceMiddleware
from skipvit.service.schemas import ConfigResponse, ConfigUpdate, ParetoResponse, PointOut
from skipvit.service.settings import Settings
from skipvit.service.worker import EngineGone, EngineProcess, layout

log = logging.getLogger("skipvit.service")
STATIC = Path(__file__).parent / "static"


METHOD_TEXT = {
    "static": "every image runs every layer",
    "rl": "RL gates decide per image which layers run",
    "nsga": "RL gates with per-layer thresholds found by NSGA-II (-1 removes a layer)",
    "nsga-joint": "joint RL-NSGA: gates and thresholds searched together",
    "lac": "LAC: an image stops when the L2 norm of its hidden state stops growing (alpha sets how soon)",
    "dyce": "DyCE: exit heads after chosen layers; an image leaves at the first exit whose max softmax "
    "exceeds its threshold",
}


def describe(point) -> str:
    """What a point does (shown by /pareto and the web page)."""
    text = METHOD_TEXT.get(point.method, point.method)
    if point.method == "lac":
        alpha, mode = point.params.get("alpha"), point.params.get("mode", "per-example")
        who = "the request's images halt together" if mode == "per-batch" else "each image halts on its own"
        text += f"; {mode}, alpha {alpha}: {who}"
    return text


def serving(point, front) -> str:
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


def start_engine(settings: Settings) -> BundleView:
    """Load the bundle and warm it up, in child processes (default) or in this one."""
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
        )
    set_backend(settings.compact)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    engine = Engine.from_dir(settings.bundle, settings.device, settings.top_k)
    engine.warm_up()
    return engine


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    admission = Admission()

    def run_batch(images: torch.Tensor, points: list[str]) -> list[RowResult]:  # worker thread
        try:
            rows = app.state.engine.predict(images, points)
        except EngineGone as e:  # /livez and /readyz fail from now on, so that an orchestrator restarts us
            app.state.load_error = str(e)
            metrics.ready.set(0)
            raise
        metrics.rows(points, [r.path for r in rows])
        return rows

    async def load() -> None:
        """Load the bundle, warm up, start the batcher. Runs after startup, so that /livez answers
        (and /readyz says 503) while the model loads."""
        try:
            engine = await run_in_threadpool(start_engine, settings)
            app.state.engine = engine
            metrics.init_layers(engine.depth)
            active = engine.point(settings.point)
            metrics.set_active(active.id, active.method, active.weights)
            batcher = Batcher(
                run_batch,
                active=active.id,
                key=engine.batch_key,
                knobs=Knobs(settings.max_batch_size, settings.max_wait_ms, settings.max_queue),
                timeout_s=settings.request_timeout_s,
                observer=metrics,
                depth=settings.pipeline_depth,
            )
            batcher.start()
            app.state.batcher = batcher
        except Exception as e:  # /livez turns 503 with the reason, so an orchestrator restarts us
            app.state.load_error = f"{type(e).__name__}: {e}"
            log.exception("could not load the bundle %s", settings.bundle)
            return
        app.state.ready = True
        metrics.ready.set(1)
        log.info("serving %s (point %s) on %s", settings.bundle, active.id, engine.device)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        metrics.ready.set(0)
        token = settings.admin_token.get_secret_value() if settings.admin_token else None
        app.state.admin_token = admin_token(token, settings.admin_token_file)
        loading = asyncio.create_task(load(), name="skipvit-load")
        try:
            yield
        finally:
            app.state.ready = False
            metrics.ready.set(0)
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            engine = getattr(app.state, "engine", None)
            batcher = getattr(app.state, "batcher", None)
            if batcher is not None and not await batcher.stop(timeout=settings.drain_timeout_s):
                # The engine held a batch past the drain's bound (hung): its requests heard 503.
                # A process engine is ended below; a thread cannot be, and `skipvit serve` exits
                # 1 without waiting for it (``engine_hung``).
                log.warning(
                    "the engine did not finish its batch within %g s; giving up on it",
                    settings.drain_timeout_s,
                )
                app.state.engine_hung = True
            if engine is not None:
                await run_in_threadpool(engine.close)

    app = FastAPI(
        title="skipvit",
        version="0.1.0",
        lifespan=lifespan,
        description="Adaptive-depth ViT classification: each image runs only the layers it needs.",
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.admission = admission
    app.state.ready = False
    app.state.load_error = None
    app.state.engine_hung = False  # set at shutdown if the engine never returned a batch
    app.add_middleware(
        ServiceMiddleware,
        classify=Classify(app.state, settings, metrics),
        metrics=metrics,
        admission=admission,
        max_body_bytes=settings.max_body_bytes,
    )

    def openapi() -> dict:  # the routes, plus /classify (a plain ASGI app, see service.classify)
        if app.openapi_schema is None:
            app.openapi_schema = document(
                get_openapi(
                    title=app.title, version=app.version, description=app.description, routes=app.routes
                )
            )
        return app.openapi_schema

    app.openapi = openapi

    async def drain(timeout: float | None = None) -> bool:
        """Stop admitting /classify (503) and answer everything admitted; return once nothing is in
        flight and no request has come for ``drain_quiet_s``. True if that happened within
        ``timeout`` (``drain_timeout_s``); the lifespan's shutdown then stops the batcher."""
        timeout = settings.drain_timeout_s if timeout is None else timeout
        admission.draining = True  # /readyz and new /classify now answer 503
        metrics.ready.set(0)
        batcher: Batcher | None = getattr(app.state, "batcher", None)
        if batcher is not None:
            batcher.flush()
        done = await admission.wait_idle(timeout, quiet=settings.drain_quiet_s)
        if done:
            log.info("drained: every admitted request answered")
        else:  # what still waits for the engine hears 503 now; what computes gets until uvicorn's own timeout
            dropped = batcher.reject_queued() if batcher is not None else 0
            log.warning("drain timed out after %g s: %d queued requests answered 503", timeout, dropped)
        return done

    app.state.drain = drain

    def reject(status: int, reason: str, message: str, headers: dict | None = None) -> HTTPException:
        metrics.rejected(reason)
        return HTTPException(status_code=status, detail=message, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return JSONResponse(status_code=422, content={"detail": jsonable_errors(exc)})

    def require_admin(request: Request) -> None:
        token = getattr(app.state, "admin_token", None)  # set in lifespan; without it nothing passes
        if not token or not bearer_ok(request.headers.get("authorization"), token):
            raise reject(
                401,
                "unauthorized",
                "missing or wrong admin token; Hint: send 'Authorization: Bearer <token>' with the "
                "token from SKIPVIT_ADMIN_TOKEN or the server's token file",
                {"WWW-Authenticate": "Bearer"},
            )

    def _known(point_id: str) -> None:
        if why := unknown_point(app.state.engine, point_id):
            raise reject(404, "unknown_point", why)

    @app.get("/livez")
    async def livez() -> JSONResponse:
        if app.state.load_error:
            return JSONResponse(status_code=503, content={"status": "failed", "error": app.state.load_error})
        return JSONResponse(content={"status": "alive"})

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ready = bool(app.state.ready) and not admission.draining and not app.state.load_error
        body = {"ready": ready, "draining": admission.draining}
        if app.state.load_error:
            body["error"] = app.state.load_error
        return JSONResponse(status_code=200 if ready else 503, content=body)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:  # the batcher keeps the queue gauge current
        data, content_type = metrics.exposition()
        return Response(data, media_type=content_type)

    def _points() -> list[PointOut]:
        active, front = app.state.batcher.active, app.state.engine.bundle.front
        return [
            PointOut(**p.to_dict(), description=describe(p), active=p.id == active, serving=serving(p, front))
            for p in front
        ]

    @app.get("/pareto", response_model=ParetoResponse)
    async def pareto() -> ParetoResponse:
        batcher = _ready_batcher()
        return ParetoResponse(active=batcher.active, points=_points())

    def _ready_batcher() -> Batcher:
        if not app.state.ready:
            raise reject(503, "not_ready", NOT_READY, {"Retry-After": "1"})
        return app.state.batcher

    def _config() -> ConfigResponse:
        b: Batcher = app.state.batcher
        return ConfigResponse(
            point=b.active,
            max_batch_size=b.knobs.max_batch_size,
            max_wait_ms=b.knobs.max_wait_ms,
            max_queue=b.knobs.max_queue,
            request_timeout_s=b.timeout_s,
        )

    @app.get("/config", response_model=ConfigResponse)
    async def get_config() -> ConfigResponse:
        _ready_batcher()
        return _config()

    @app.put("/config", response_model=ConfigResponse, dependencies=[Depends(require_admin)])
    async def put_config(update: ConfigUpdate) -> ConfigResponse:
        """Switch the active point and/or change the batching knobs; applies between batches."""
        batcher = _ready_batcher()
        if update.point is not None:
            _known(update.point)
        knobs = batcher.knobs.update(
            max_batch_size=update.max_batch_size, max_wait_ms=update.max_wait_ms, max_queue=update.max_queue
        )
        if knobs.max_wait_ms >= 1000 * batcher.timeout_s:
            raise HTTPException(
                status_code=422,
                detail=(
                    f"max_wait_ms {knobs.max_wait_ms:g} is not below the request timeout ({batcher.timeout_s:g} s, "
                    "SKIPVIT_REQUEST_TIMEOUT_S): every request that waits for company would time out; "
                    "Hint: choose a shorter wait"
                ),
            )
        if update.point is not None and update.point != batcher.active:
            p = app.state.engine.point(update.point)
            batcher.set_active(p.id)  # on the event loop, so never inside a batch being planned
            metrics.switches.inc()
            metrics.set_active(p.id, p.method, p.weights)
            log.info("active point: %s", p.id)
        if knobs != batcher.knobs:
            batcher.set_knobs(knobs)
            log.info("batching knobs: %s", knobs)
        return _config()

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def jsonable_errors(exc: RequestValidationError) -> list[dict]:
    """Validation errors without the raw input (which may be bytes) and with str contexts."""
    out = []
    for e in exc.errors():
        item = {k: v for k, v in e.items() if k not in ("input", "ctx", "url")}
        if "ctx" in e:
            item["ctx"] = {k: str(v) for k, v in e["ctx"].items()}
        out.append(item)
    return out
