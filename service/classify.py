"""``POST /classify``, the hot route, as a plain ASGI app.

Why not a FastAPI route: with one small image per request the model's share of the work is small,
and on the 2-core machine the server's own CPU per request competes with the model for the cores.
Under load FastAPI's layers around the handler (routing, dependency solving, the ``Request``
object, query parsing, ``Response``) were about half of the event loop's CPU per request.
``ServiceMiddleware`` hands every request for ``/classify`` to this app directly (after admission
and the body limit); the other routes stay FastAPI routes. OpenAPI still documents the route
(``document``), and a test validates the answers against ``ClassifyResponse``.

decode (``service.decode``) -> batch (``service.batcher``) -> encode (``service.schemas``): this
module only reads the request, wires those together and maps errors to statuses.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import parse_qsl

import torch

from service.asgi import ClientGone, header, read_body, send_json
from service.batcher import Rejected
from service.decode import DecodeError, decode_image
from service.metrics import Metrics
from service.multipart import MultipartError, read_files
from service.schemas import ClassifyResponse, classify_body
from service.settings import Settings

log = logging.getLogger("skipvit.service")
DECODE_INLINE_BYTES = 64 * 1024  # smaller uploads decode on the event loop; bigger ones in a thread


NOT_READY = "the model is not loaded yet; Hint: retry shortly"


def unknown_point(engine, point_id: str) -> str | None:
    """Why ``point_id`` cannot be served (it is not on the bundle's front), or None if it can."""
    try:
        engine.point(point_id)
    except KeyError:
        known = ", ".join(p.id for p in engine.bundle.front)
        return f"unknown point {point_id!r}; known points: {known} (see GET /pareto)"
    return None


class HTTPError(Exception):
    """An answer other than 200. ``reason`` (a ``service.metrics.REASONS`` label) counts it as a
    rejection; None does not."""

    def __init__(self, status: int, message: str, reason: str | None = None, headers=()) -> None:
        super().__init__(message)
        self.status, self.reason, self.headers = status, reason, list(headers)


class Classify:
    """The ASGI app of ``/classify``. ``state`` is the FastAPI app's state: ``ready``, ``batcher``
    and ``engine`` are read at each request (they appear once the bundle is loaded)."""

    def __init__(self, state, settings: Settings, metrics: Metrics) -> None:
        self.state, self.settings, self.metrics = state, settings, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["method"] != "POST":
            await send_json(send, 405, {"detail": "Method Not Allowed; Hint: POST images as multipart/form-data"},
                            [(b"allow", b"POST")])  # fmt: skip
            return
        try:
            status, body, headers = 200, await self.answer(scope, receive), []
        except ClientGone:  # nobody to answer
            return
        except HTTPError as e:
            if e.reason:
                self.metrics.rejected(e.reason)
            status, body, headers = e.status, {"detail": str(e)}, e.headers
        await send_json(send, status, body, headers)

    async def answer(self, scope, receive) -> bytes:
        s, state = self.settings, self.state
        query = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
        point = query.get("point")
        if not state.ready:  # draining is refused earlier, by the middleware
            raise HTTPError(503, NOT_READY, "not_ready", [(b"retry-after", b"1")])
        batcher, engine = state.batcher, state.engine
        body = await read_body(receive)
        try:
            files = read_files(header(scope, b"content-type"), body)
        except MultipartError as e:
            raise HTTPError(422, str(e), "bad_image") from None
        if len(files) > s.max_files:
            raise HTTPError(413, f"{len(files)} files in one request; the limit is {s.max_files} "
                            "(SKIPVIT_MAX_FILES); Hint: split the images over several requests",
                            "too_many_files")  # fmt: skip
        if point is not None and (why := unknown_point(engine, point)):
            raise HTTPError(404, why, "unknown_point")
        tensors = []
        for i, (filename, data) in enumerate(files):
            name = filename or f"file {i}"
            if len(data) > s.max_image_bytes:
                raise HTTPError(413, f"{name}: larger than {s.max_image_bytes} bytes", "body_too_large")
            args = dict(
                channels=engine.channels, size=engine.image_size, max_pixels=s.max_image_pixels, name=name
            )
            try:
                if len(data) <= DECODE_INLINE_BYTES:
                    tensors.append(decode_image(data, **args))
                else:
                    tensors.append(await asyncio.to_thread(decode_image, data, **args))
            except DecodeError as e:
                raise HTTPError(e.status, str(e), "bad_image") from None
        images = tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)  # (n, C, H, W)
        try:
            answer = await batcher.submit(images, point)
        except Rejected as e:  # counted by the batcher
            headers = [(b"retry-after", str(int(e.retry_after or 1)).encode())] if e.status == 503 else []
            raise HTTPError(e.status, str(e), None, headers) from None
        except Exception as e:  # the engine failed on this batch (every request in it hears so)
            log.error("a batch failed: %s: %s", type(e).__name__, e)
            raise HTTPError(
                500, f"the model failed on this request's batch ({type(e).__name__}: {e})"
            ) from None
        return classify_body(answer.point, answer.rows)


CLASSIFY_OPENAPI = {  # what the ASGI app reads, for the docs
    "parameters": [
        {
            "name": "point",
            "in": "query",
            "required": False,
            "schema": {"type": "string"},
            "description": "point id (see GET /pareto); default: the active point",
        }
    ],
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "PNG, JPEG or WebP images, answered in this order",
                        }
                    },
                }
            }
        },
    },
}


def document(schema: dict) -> dict:
    """Add ``POST /classify`` (query, multipart body, ``ClassifyResponse``) to an OpenAPI schema
    built from the FastAPI routes, which do not include it."""
    answer = ClassifyResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(answer.pop("$defs", {}))
    components["ClassifyResponse"] = answer
    json_answer = {"application/json": {"schema": {"$ref": "#/components/schemas/ClassifyResponse"}}}
    schema["paths"]["/classify"] = {
        "post": {
            "summary": "Classify",
            "description": "One result per file, in order: label, top-k probabilities, layers run and "
            "the path through the layers. The response names the point that served it.",
            "operationId": "classify",
            **CLASSIFY_OPENAPI,
            "responses": {"200": {"description": "the results", "content": json_answer}},
        }
    }
    return schema
