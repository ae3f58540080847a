"""``POST /classify``, the hot route, as a plain ASGI app.

Why not a FastAPI route: with one small image per request the model's share of the work is small,
and on the 2-core machine the server's own CPU per request competes with the model for the cores.
Under load FastAPI's layers around the handler (routing, dependency solving, the ``Request``
object, query parsing, ``Response``) were about half of the event loop's CPU per request.
``ServiceMiddleware`` hands every request for ``/classify`` to this app directly (after admission
and the body limit); the other routes stay FastAPI routes. OpenAPI still documents the route
(``document``), and a test validates the answers against ``ClassifyResponse``.

decode (``service.decode``) -> batch (``service.batcher``) -> encode (``service.schemas``): this
module only reads the request and wires those together; ``service.failures`` answers the errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from urllib.parse import parse_qs

import torch

from skipvit.service.asgi import ClientGone, header, read_body, send_json
from skipvit.service.budget import BudgetTimeout
from skipvit.service.connections import ON_LOST, LostHook, http_response
from skipvit.service.decode import DecodeError, decode_as_is, decode_cost, finish, open_image
from skipvit.service.echo import echo
from skipvit.service.engine import BundleView
from skipvit.service.failures import (
    BAD_REQUEST,
    ENGINE_GONE,
    IMAGE_TOO_LARGE,
    METHOD_NOT_ALLOWED,
    MODEL_FAILED,
    NOT_MULTIPART,
    NOT_READY,
    OVERLOADED,
    QUEUE_FULL,
    SHUTTING_DOWN,
    Failure,
    count,
    failure_of,
    respond,
    send_failure,
)
from skipvit.service.middleware import TICKET
from skipvit.service.multipart import MultipartError, read_files
from skipvit.service.pareto import check_point
from skipvit.service.schemas import ClassifyResponse, classify_body
from skipvit.service.state import ServiceState

log = logging.getLogger("skipvit.service")
CACHED_REFUSALS = 64  # distinct refusal answers kept as bytes (``refuse_at_headers``)
WATCH_DISCONNECT_AFTER_S = 0.25  # a request still unanswered by then is dropped if its client leaves


def point_param(query_string: bytes) -> str | None:
    """The ``point`` of the query string: None when absent; one non-empty value, else 422."""
    values = parse_qs(query_string.decode("latin-1"), keep_blank_values=True).get("point")
    if values is None:
        return None
    if len(values) > 1:
        raise Failure(
            BAD_REQUEST, f"point= given {len(values)} times; Hint: name one point (see GET /pareto)"
        )
    if not values[0]:
        raise Failure(
            BAD_REQUEST,
            "point= is empty; Hint: omit it to use the active point, or name one (see GET /pareto)",
        )
    return values[0]


async def answer_or_gone(future: asyncio.Future, receive, lost: LostHook | None = None):
    """Await the batcher's ``future``; ``ClientGone`` if the client disconnects meanwhile. A
    request whose client has gone is cancelled, so the batcher drops it before compute (or
    ignores its rows).

    Served by ``GuardedProtocol``, the protocol says when the client leaves (``lost``): nothing
    more per request. Otherwise (another ASGI server) the disconnect is watched on ``receive``,
    once the request has waited ``WATCH_DISCONNECT_AFTER_S``: under overload every request waits
    that long, and a task each cost the event loop measurably (``skipvit bench overload``)."""
    if lost is not None:
        return await _answer_or_lost(future, lost)
    loop = asyncio.get_running_loop()
    watcher: asyncio.Task | None = None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        future.cancel()

    def start() -> None:
        nonlocal watcher
        if not future.done():
            watcher = loop.create_task(watch())

    timer = loop.call_later(WATCH_DISCONNECT_AFTER_S, start)
    try:
        return await future
    except asyncio.CancelledError:
        if gone:
            raise ClientGone from None
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()


async def _answer_or_lost(future: asyncio.Future, lost: LostHook):
    if lost.gone:  # left before its request was queued
        future.cancel()
        raise ClientGone
    lost.callback = future.cancel
    try:
        return await future
    except asyncio.CancelledError:
        if lost.gone:
            raise ClientGone from None
        raise
    finally:
        lost.callback = None


class Classify:
    """The ASGI app of ``/classify``. It reads the ``ServiceState`` at each request: ``batcher`` and
    ``engine`` appear once the bundle is loaded."""

    def __init__(self, state: ServiceState) -> None:
        self.state, self.settings, self.metrics = state, state.settings, state.metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["method"] != "POST":
            only_post = "Method Not Allowed; Hint: POST images as multipart/form-data"
            await send_failure(send, Failure(METHOD_NOT_ALLOWED, only_post, allow=("POST",)), self.metrics)
            return
        try:
            body = await self.answer(scope, receive)
        except ClientGone:  # nobody to answer
            return
        except asyncio.CancelledError:
            # uvicorn cancels the requests still running when its graceful-shutdown time is up (a
            # drain that timed out): they still get an answer, not a bare 500. Answered, the
            # request ends here: re-raised, uvicorn would log the expected cancellation as an
            # "Exception in ASGI application" with its traceback.
            with contextlib.suppress(Exception):
                await send_failure(send, Failure(SHUTTING_DOWN), self.metrics)
            return
        except Failure as e:
            await send_failure(send, e, self.metrics)
            return
        await send_json(send, 200, body)

    def refusal(self) -> Failure | None:
        """Whether a ``POST /classify`` must be refused, decided from what is known before its body
        is read (the middleware asks, at the headers): not ready, the engine gone, the queue full,
        or an expected wait past the request timeout (past the p95 target, while the autopilot is on).
        None: admit it. A refusal is counted in the autopilot's arrival rate (an admitted request
        is counted when it is queued): the load it sees is the load offered, not what got in."""
        failure = self._refusal()
        if failure is not None and self.state.pilot is not None:
            self.state.pilot.refused()
        return failure

    def _refusal(self) -> Failure | None:
        state = self.state
        if not state.ready:
            return Failure(NOT_READY)
        if state.load_error:  # the engine process died: /livez and /readyz say so too
            return Failure(ENGINE_GONE)
        batcher, arriving = state.batcher, state.admission.arriving
        knobs = batcher.knobs
        if batcher.queued_images + arriving >= knobs.max_queue:
            return Failure(  # the same words each time: the answer's bytes are reused (``refuse_at_headers``)
                QUEUE_FULL,
                f"the queue is full ({knobs.max_queue} images, SKIPVIT_MAX_QUEUE); Hint: retry after the "
                "Retry-After delay",
                batcher.retry_after(),
            )
        wait = batcher.expected_answer(arriving)
        if wait >= batcher.timeout_s:
            return Failure(
                OVERLOADED,
                f"the expected wait ({wait:.1f} s) passes the request timeout ({batcher.timeout_s:g} s, "
                "SKIPVIT_REQUEST_TIMEOUT_S); Hint: retry after the Retry-After delay",
                batcher.retry_after(),
            )
        # The autopilot holds a p95 target: where even its leanest point cannot (it stays above its
        # accuracy floor, predicted past capacity: ``Pilot.shedding``), a request expected to be
        # answered past a share of the target (room for the HTTP work and the spread; the autopilot
        # learns the share, ``Pilot.shed_at``) is refused instead, and so is one that finds as many
        # images waiting as the autopilot lets wait once that share is at its lowest
        # (``Pilot.shed_waiting``: smaller batches, each computed sooner). The first rule never
        # refuses with nothing queued and the engine idle: a compute estimate left high by a burst
        # could otherwise refuse everything from then on.
        pilot = state.pilot
        if pilot is None or not pilot.shedding:
            return None
        target = pilot.config.target.p95_s
        if batcher.expected_wait(arriving) > 0 and wait >= pilot.shed_at * target:
            return Failure(
                OVERLOADED,
                f"the expected wait ({1000 * wait:.0f} ms) passes the autopilot's p95 target "
                f"({1000 * target:g} ms); Hint: retry after the Retry-After delay",
                batcher.retry_after(),
            )
        cap = pilot.shed_waiting(knobs.max_batch_size)
        if cap is not None and batcher.queued_images + arriving >= cap:
            return Failure(
                OVERLOADED,
                f"{cap} images wait already, as many as the autopilot lets wait to hold its p95 target "
                f"({1000 * target:g} ms); Hint: retry after the Retry-After delay",
                batcher.retry_after(),
            )
        return None

    async def answer(self, scope, receive) -> bytes:
        state = self.state
        if not state.ready:  # admitted at the headers, but the state changed meanwhile
            raise Failure(NOT_READY)
        if state.load_error:
            raise Failure(ENGINE_GONE)
        batcher, engine = state.batcher, state.engine
        ticket = scope.get(TICKET)
        started = time.monotonic()
        body = await read_body(receive)
        point = point_param(scope["query_string"])
        content_type = header(scope, b"content-type")
        if not content_type or not content_type.lower().startswith("multipart/form-data"):
            raise Failure(
                NOT_MULTIPART,
                f"the body is {echo(content_type or 'untyped')}, not multipart/form-data; Hint: send one or "
                "more parts named 'files' (e.g. curl -F files=@a.png)",
            )
        try:
            files = read_files(content_type, body, max_files=self.settings.max_files)
        except MultipartError as e:
            raise failure_of(e) from None
        if point is not None:
            check_point(engine, point)
        images = await self.decode(engine, files, ticket.arrived if ticket is not None else time.monotonic())
        try:
            arrived = None if ticket is None else ticket.arrived
            future = batcher.submit(images, point, arrived)
        except Exception as e:
            raise failure_of(e) from None
        finally:
            if ticket is not None:
                ticket.queued()
        try:
            answer = await answer_or_gone(future, receive, scope.get(ON_LOST))
        except ClientGone:
            raise
        except Exception as e:
            failure = failure_of(e)
            if failure.kind is MODEL_FAILED:  # the engine failed on this batch (every request in it hears so)
                log.error("a batch failed: %s: %s", type(e).__name__, e)
            raise failure from None
        if point is None and state.pilot is not None:  # the autopilot's observed latency
            state.pilot.record(
                time.monotonic() - (ticket.arrived if ticket is not None else started), answer.point
            )
        return classify_body(answer.point, answer.rows)

    async def decode(
        self, engine: BundleView, files: list[tuple[str, bytes]], arrived: float
    ) -> torch.Tensor:
        """The uploads as one (n, C, H, W) uint8 tensor in the bundle's layout."""
        s = self.settings
        tensors = []
        for i, (filename, data) in enumerate(files):
            name = echo(filename) if filename else f"file {i}"
            if len(data) > s.max_image_bytes:
                raise Failure(IMAGE_TOO_LARGE, f"{name}: larger than {s.max_image_bytes} bytes")
            args = dict(channels=engine.channels, size=engine.image_size, name=name)
            try:
                # A PNG already in the bundle's layout decodes in microseconds, on the event loop;
                # anything else may take Pillow a while (a few KB can declare 16 megapixels), so
                # it decodes in a thread, within the decode budget (``service.budget``).
                # (not where the processor crops: an image at the model's size is resized and cut too)
                as_is = None if engine.crop else decode_as_is(data, max_pixels=s.max_image_pixels, **args)
                pixels = (
                    as_is if as_is is not None else await self.decode_in_budget(data, arrived, args, engine)
                )
                tensors.append(pixels)
            except DecodeError as e:
                raise failure_of(e) from None
        return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)  # (n, C, H, W)

    async def decode_in_budget(
        self, data: bytes, arrived: float, args: dict, engine: BundleView
    ) -> torch.Tensor:
        """Read the header, wait (until the deadline at most) for room in the decode budget, decode
        (brought to the model's size as its processor does: the bundle's ``resample`` filter, and
        its resize + center crop where it crops)."""
        state = self.state
        img = await asyncio.to_thread(open_image, data, max_pixels=self.settings.max_image_pixels, **args)
        cost = decode_cost(img)
        left = arrived + self.settings.request_timeout_s - time.monotonic()
        try:
            async with state.decode_budget.hold(cost, timeout=max(0.0, left)):
                return await state.decode_pool.run(
                    cost, finish, img, resample=engine.resample, **engine.crop, **args
                )
        except BudgetTimeout:
            raise Failure(
                OVERLOADED,
                f"{args['name']}: the decodes in progress hold the memory budget "
                "(SKIPVIT_DECODE_BUDGET_MB) past the request timeout; Hint: send smaller images, "
                "or retry after the Retry-After delay",
                retry_after=1,
            ) from None


def refuse_at_headers(state: ServiceState):
    """For the HTTP protocol (``service.connections``): refuse a ``POST /classify`` at its headers
    when ``Classify.refusal`` would, with the same answer and the same counts as the middleware,
    but before an ASGI task exists (the cheapest refusal there is). A drain goes through the
    middleware, which reads the body before it answers and closes."""
    classify = Classify(state)
    metrics = state.metrics
    # Under overload most answers are one of a few: each is built once. Keyed by what makes the
    # bytes; emptied when it holds more than ``CACHED_REFUSALS`` (answers whose words carry a number).
    answers: dict[tuple, bytes] = {}

    def refuse(keep_alive: bool) -> tuple[bytes, bool] | None:
        if state.admission.draining:
            return None
        failure = classify.refusal()
        if failure is None:
            return None
        keep_alive = keep_alive and not failure.kind.close
        key = (failure.kind.status, str(failure), failure.retry_after, keep_alive)
        answer = answers.get(key)
        if answer is None:
            status, body, headers = respond(failure, metrics)
            if len(answers) >= CACHED_REFUSALS:
                answers.clear()
            answer = answers[key] = http_response(status, body, headers, close=not keep_alive)
        else:
            count(failure, metrics)  # as ``respond`` does
        metrics.answered("/classify", failure.kind.status, 0.0)
        return answer, keep_alive

    return refuse


def classify_openapi(max_files: int) -> dict:
    """What the ASGI app reads, for the docs: the query and the multipart body."""
    files = {
        "type": "array",
        "minItems": 1,
        "maxItems": max_files,
        "items": {"type": "string", "format": "binary"},
        "description": f"PNG, JPEG or WebP images (1 to {max_files}, SKIPVIT_MAX_FILES), answered in this order",
    }
    return {
        "parameters": [
            {
                "name": "point",
                "in": "query",
                "required": False,
                "schema": {"type": "string", "minLength": 1},
                "description": "point id (see GET /pareto); default: the active point",
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": ["files"], "properties": {"files": files}},
                    "encoding": {"files": {"contentType": "image/png, image/jpeg, image/webp"}},
                }
            },
        },
    }


def document(schema: dict, max_files: int) -> dict:
    """Add ``POST /classify`` (query, multipart body, ``ClassifyResponse``) to an OpenAPI schema
    built from the FastAPI routes, which do not include it; its answers but 200 are
    ``service.contract``'s."""
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
            **classify_openapi(max_files),
            "responses": {"200": {"description": "the results", "content": json_answer}},
        }
    }
    return schema
