"""The naive endpoint: the same model and HTTP contract as `skipvit serve`, without batching.

It is the baseline of `skipvit bench server`: each request's images run through
``engine.predict`` on their own, one request at a time (an asyncio lock serialises them), which
is what a plain "FastAPI + model" endpoint does. Decoding and response encoding are the same as
the real server's, and the model runs on one dedicated worker thread as in the real server's
batcher, so the difference measured is the batching. (A pool of worker threads would be unfair
to the baseline: each thread that calls torch gets its own OpenMP team, and idle teams spinning
on a 2-core machine stall the one at work for hundreds of milliseconds.)

    python -m skipvit.benchmarks.naive_server --bundle checkpoints/fashion-mnist --port 8001
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import torch
from fastapi import FastAPI, File, HTTPException, Query, UploadFile
from fastapi.responses import JSONResponse, Response

from skipvit.service.decode import DecodeError, decode_image
from skipvit.service.engine import Engine
from skipvit.service.schemas import ClassifyResponse, classify_body

MAX_IMAGE_PIXELS = 4096 * 4096  # the real server's default decoded-pixel cap


def create_naive_app(bundle: str | Path, device: str = "cpu", top_k: int = 3) -> FastAPI:
    """POST /classify and GET /readyz over ``bundle``; the engine loads in the lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="naive-engine") as worker:
            engine = await loop.run_in_executor(worker, Engine.from_dir, bundle, device, top_k)
            await loop.run_in_executor(worker, engine.warm_up)
            app.state.engine, app.state.worker = engine, worker
            app.state.ready = True
            yield
            app.state.ready = False

    app = FastAPI(title="skipvit naive baseline", lifespan=lifespan)
    app.state.ready = False
    one_at_a_time = asyncio.Lock()

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ready = bool(app.state.ready)
        return JSONResponse(status_code=200 if ready else 503, content={"ready": ready})

    @app.post("/classify", response_model=ClassifyResponse)
    async def classify(
        files: Annotated[list[UploadFile], File()], point: Annotated[str | None, Query()] = None
    ) -> Response:
        if not app.state.ready:
            raise HTTPException(503, "the model is not loaded yet", headers={"Retry-After": "1"})
        engine: Engine = app.state.engine
        try:
            point_id = engine.point(point).id
        except KeyError as e:
            raise HTTPException(404, str(e.args[0])) from None
        tensors = []
        for i, f in enumerate(files):
            data = await f.read()
            try:
                tensors.append(
                    decode_image(
                        data,
                        channels=engine.channels,
                        size=engine.image_size,
                        max_pixels=MAX_IMAGE_PIXELS,
                        name=f.filename or f"file {i}",
                    )
                )
            except DecodeError as e:
                raise HTTPException(e.status, str(e)) from None
        batch = torch.stack(tensors)  # (B, C, H, W): this request's images only
        async with one_at_a_time:
            loop = asyncio.get_running_loop()
            results = await loop.run_in_executor(app.state.worker, engine.predict, batch, point_id)
        return Response(classify_body(point_id, results), media_type="application/json")

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    p = argparse.ArgumentParser(
        prog="python -m skipvit.benchmarks.naive_server", description=__doc__.split("\n")[0]
    )
    p.add_argument("--bundle", required=True, help="bundle directory")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--log-level", default="warning")
    args = p.parse_args(argv)
    if not (Path(args.bundle) / "bundle.json").is_file():
        raise SystemExit(f"no bundle at {args.bundle}; Hint: pass --bundle checkpoints/fashion-mnist")
    # As in service.main: uvicorn drains on SIGTERM, then re-raises it; make that a clean exit.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.run(
        create_naive_app(args.bundle, args.device), host="127.0.0.1", port=args.port, log_level=args.log_level
    )


if __name__ == "__main__":
    main()
