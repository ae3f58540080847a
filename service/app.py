"""FastAPI app factory. The bundle is loaded in the lifespan, never at import.

decode (service.decode) -> predict (service.engine) -> encode (service.schemas); the routes only
wire those together and map errors to status codes.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Annotated

import torch
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from service.decode import DecodeError, decode_image
from service.engine import Engine, RowResult
from service.schemas import ClassifyResponse, ClassifyResult, ConfigResponse, ParetoResponse, PointOut, TopK
from service.settings import Settings

log = logging.getLogger("skipvit.service")


def _encode(r: RowResult) -> ClassifyResult:
    return ClassifyResult(
        label=r.label, index=r.index, probability=round(r.probability, 6),
        top_k=[TopK(label=lbl, index=i, probability=round(p, 6)) for lbl, i, p in r.top_k],
        layers_executed=r.layers_executed, path=r.path,
    )  # fmt: skip


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.ready = False
        engine = await run_in_threadpool(Engine.from_dir, settings.bundle, settings.device, settings.top_k)
        app.state.engine = engine
        app.state.active_point = engine.point(settings.point).id
        await run_in_threadpool(engine.warm_up)
        app.state.ready = True
        log.info("serving %s (point %s) on %s", settings.bundle, app.state.active_point, engine.device)
        yield
        app.state.ready = False

    app = FastAPI(title="skipvit", version="0.1.0", lifespan=lifespan,
                  description="Adaptive-depth ViT classification: each image runs only the layers it needs.")  # fmt: skip
    app.state.settings = settings
    app.state.ready = False

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        missing_files = any(e.get("loc", [None, None])[-1] == "files" for e in exc.errors())
        hint = "Hint: send multipart/form-data with one or more parts named 'files'." if missing_files else ""
        return JSONResponse(
            status_code=422,
            content={"detail": exc.errors(), "hint": hint},
        )

    @app.get("/livez")
    async def livez() -> dict:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ready = bool(app.state.ready)
        return JSONResponse(status_code=200 if ready else 503, content={"ready": ready})

    def _engine() -> Engine:
        if not app.state.ready:
            raise HTTPException(
                status_code=503, detail="the model is not loaded yet", headers={"Retry-After": "1"}
            )
        return app.state.engine

    @app.post("/classify", response_model=ClassifyResponse)
    async def classify(
        files: Annotated[list[UploadFile], File(description="PNG, JPEG or WebP images")],
        point: Annotated[str | None, Query(description="point id; default: the active point")] = None,
    ) -> ClassifyResponse:
        engine = _engine()
        if len(files) > settings.max_files:
            raise HTTPException(413, f"{len(files)} files in one request; the limit is {settings.max_files}")
        point_id = point or app.state.active_point
        try:
            engine.point(point_id)
        except KeyError:
            known = ", ".join(p.id for p in engine.bundle.front)
            raise HTTPException(
                404, f"unknown point {point_id!r}; known points: {known} (see GET /pareto)"
            ) from None
        tensors = []
        for i, f in enumerate(files):
            data = await f.read(settings.max_image_bytes + 1)
            name = f.filename or f"file {i}"
            if len(data) > settings.max_image_bytes:
                raise HTTPException(413, f"{name}: larger than {settings.max_image_bytes} bytes")
            try:
                tensors.append(decode_image(data, channels=engine.channels, size=engine.image_size,
                                            max_pixels=settings.max_image_pixels, name=name))  # fmt: skip
            except DecodeError as e:
                raise HTTPException(e.status, str(e)) from None
        batch = torch.stack(tensors)  # (B, C, H, W)
        results = await run_in_threadpool(engine.predict, batch, point_id)
        return ClassifyResponse(point=point_id, results=[_encode(r) for r in results])

    @app.get("/pareto", response_model=ParetoResponse)
    async def pareto() -> ParetoResponse:
        engine = _engine()
        points = [PointOut(**p.to_dict()) for p in engine.bundle.front]
        return ParetoResponse(active=app.state.active_point, points=points)

    @app.get("/config", response_model=ConfigResponse)
    async def get_config() -> ConfigResponse:
        _engine()
        return ConfigResponse(point=app.state.active_point)

    return app
