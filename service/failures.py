"""Every answer other than 200, in one place: the kind of failure, its status, message, headers and
rejection reason, and where a refusal is counted.

Both halves of the app answer through here: the plain-ASGI ``/classify`` and the middleware
(``send_failure``), and the FastAPI routes (``install``, the handler of a raised ``Failure``).
``respond`` is the one place that counts a rejection (``skipvit_rejections_total{reason}``);
``failure_of`` is the one mapping of the errors the parts raise (batcher, engine, upload parsing)
to kinds. The body is ``{"detail": message}`` on both halves (a body that fails validation: a list
of pydantic's errors), also for an unknown path (404) and a method the path does not take (405,
whose Allow header lists every method some route takes at that path: Starlette's own names only
the first route's).

Each kind carries ``doc``, what it means in a sentence: ``service.contract`` writes the OpenAPI
responses of every route from the kinds it can answer, so the schema says what the app does.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

from skipvit.service.asgi import send_json
from skipvit.service.batcher import DeadlineExceeded, Draining, QueueFull, TooBig
from skipvit.service.decode import DecodeError
from skipvit.service.echo import echo
from skipvit.service.metrics import Metrics
from skipvit.service.multipart import MultipartError, TooManyParts
from skipvit.service.worker import EngineGone

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Kind:
    """One kind of failure and how it is answered."""

    status: int
    reason: str | None = None  # label of skipvit_rejections_total; None: not counted as a rejection
    message: str = ""  # the answer's detail, unless the failure brings its own
    retry_after: bool = False  # answer Retry-After (the failure's seconds, else 1)
    close: bool = False  # answer Connection: close (the rest of the body is not read)
    headers: Headers = ()
    allow: bool = False  # answer Allow (the failure's methods)
    doc: str = ""  # when it is answered, for the API's documentation


RETRY_ELSEWHERE = "Hint: retry on another replica"
NOT_READY = Kind(
    503,
    "not_ready",
    "the model is not loaded yet; Hint: retry shortly",
    retry_after=True,
    doc="the model is not loaded yet",
)
ENGINE_GONE = Kind(
    503,
    "engine_gone",
    "the model process running this request's batch was lost and is being restarted; "
    "Hint: retry after the Retry-After delay, or on another replica",
    retry_after=True,
    doc="the model process has exited",
)
DRAINING = Kind(  # a new /classify while draining, refused before its body is read
    503,
    "draining",
    f"the server is draining; {RETRY_ELSEWHERE}",
    retry_after=True,
    close=True,
    doc="the server is draining (stopping)",
)
DROPPED = Kind(  # queued (or computing) when the batcher stopped
    503, "draining", retry_after=True, doc="the server stopped while the request waited"
)
SHUTTING_DOWN = Kind(  # uvicorn cancelled the request when its graceful-shutdown time was up
    503,
    None,
    f"the server shut down before this request was answered; {RETRY_ELSEWHERE}",
    retry_after=True,
    close=True,
    doc="the server shut down before answering",
)
QUEUE_FULL = Kind(503, "queue_full", retry_after=True, doc="the queue is full")
OVERLOADED = Kind(  # the expected wait passes the deadline
    503, "overloaded", retry_after=True, doc="the expected wait passes the request timeout"
)
DEADLINE = Kind(504, "deadline", doc="the request timeout passed before the model ran the request")
BODY_TOO_LARGE = Kind(  # the whole body, cut off by the middleware
    413, "body_too_large", close=True, doc="the body is larger than SKIPVIT_MAX_BODY_BYTES"
)
IMAGE_TOO_LARGE = Kind(  # one upload of the body
    413, "body_too_large", doc="an image is larger than SKIPVIT_MAX_IMAGE_BYTES"
)
TOO_MANY_FILES = Kind(413, "too_many_files", doc="more images than SKIPVIT_MAX_FILES")
IMAGE_BOMB = Kind(  # declares more pixels than the cap
    413, "bad_image", doc="an image declares more pixels than SKIPVIT_MAX_IMAGE_PIXELS"
)
NOT_MULTIPART = Kind(415, "bad_image", doc="the body is not multipart/form-data")
BAD_IMAGE = Kind(
    422, "bad_image", doc="a malformed multipart body, or a file that is not a PNG, JPEG or WebP image"
)
BAD_REQUEST = Kind(422, "bad_request", doc="a malformed query (point= empty or repeated)")
INVALID_BODY = Kind(422, doc="the body does not validate (detail: pydantic's errors)")
UNKNOWN_POINT = Kind(404, "unknown_point", doc="no point has this id (see GET /pareto)")
UNAUTHORIZED = Kind(
    401,
    "unauthorized",
    "missing or wrong admin token; Hint: send 'Authorization: Bearer <token>' with the "
    "token from SKIPVIT_ADMIN_TOKEN or the server's token file",
    headers=(("www-authenticate", "Bearer"),),
    doc="missing or wrong admin token (checked before the body is read)",
)
BAD_CONFIG = Kind(422, doc="the values do not fit together (the wait for company passes the timeout)")
AUTOPILOT_CONFLICT = Kind(
    409,
    None,
    'the autopilot chooses the active point; Hint: send {"autopilot": null} first to turn it off',
    doc="a point was set while the autopilot chooses it, or the autopilot cannot work with the bundle's "
    "points (a family of one point; a floor no point of the family reaches)",
)
FLEET_STALE = Kind(
    409,
    None,
    doc="the fleet state is older than the one this replica holds (by generation, then set_at)",
)
NOT_FOUND = Kind(404, None, "Not Found; Hint: see /docs for the routes", doc="no route has this path")
METHOD_NOT_ALLOWED = Kind(
    405,
    None,
    "Method Not Allowed; Hint: use one of the methods in the Allow header",
    allow=True,
    doc="a method this path does not take (Allow lists those it does)",
)
MODEL_FAILED = Kind(500, doc="the model failed on the request's batch")  # the engine raised


class Failure(Exception):
    """Answer ``kind`` with ``message`` (default: the kind's); ``retry_after`` in seconds, ``allow``
    the methods that the path takes."""

    def __init__(
        self,
        kind: Kind,
        message: str | None = None,
        retry_after: float | None = None,
        allow: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message or kind.message)
        self.kind, self.retry_after, self.allow = kind, retry_after, allow

    def headers(self) -> list[tuple[str, str]]:
        out = list(self.kind.headers)
        if self.kind.retry_after:
            out.append(("retry-after", str(int(self.retry_after or 1))))
        if self.kind.allow:
            out.append(("allow", ", ".join(self.allow)))
        if self.kind.close:
            out.append(("connection", "close"))
        return out


def failure_of(exc: Exception) -> Failure:
    """The answer to an error raised while serving a request: the errors of the batcher, of the
    upload's parsing and decoding, an engine that is gone; anything else is the engine's own
    error on the request's batch (500)."""
    match exc:
        case Failure():
            return exc
        case QueueFull():
            return Failure(QUEUE_FULL, str(exc), exc.retry_after)
        case DeadlineExceeded():
            return Failure(DEADLINE, str(exc))
        case Draining():
            return Failure(DROPPED, str(exc))
        case TooBig():
            return Failure(TOO_MANY_FILES, str(exc))
        case EngineGone():
            return Failure(ENGINE_GONE)
        case TooManyParts():
            return Failure(
                TOO_MANY_FILES, f"{exc} (SKIPVIT_MAX_FILES); Hint: split the images over several requests"
            )
        case MultipartError():
            return Failure(BAD_IMAGE, str(exc))
        case DecodeError():
            return Failure(IMAGE_BOMB if exc.status == IMAGE_BOMB.status else BAD_IMAGE, str(exc))
    return Failure(MODEL_FAILED, f"the model failed on this request's batch ({type(exc).__name__}: {exc})")


def respond(failure: Failure, metrics: Metrics) -> tuple[int, dict, list[tuple[str, str]]]:
    """(status, body, headers) of ``failure``; counts it if it is a rejection. Every failure the
    service answers passes here, from either half of the app (or through ``count``, where the
    answer's bytes are reused)."""
    count(failure, metrics)
    return failure.kind.status, {"detail": str(failure)}, failure.headers()


def count(failure: Failure, metrics: Metrics) -> None:
    """Count ``failure`` if it is a rejection (by its reason)."""
    if failure.kind.reason is not None:
        metrics.rejected(failure.kind.reason)


async def send_failure(send, failure: Failure, metrics: Metrics) -> None:
    """Answer ``failure`` on a plain ASGI ``send``."""
    status, body, headers = respond(failure, metrics)
    await send_json(send, status, body, [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers])


def install(app: FastAPI, metrics: Metrics) -> None:
    """Answer a ``Failure`` raised by a FastAPI route (or dependency), a request that fails
    validation (422 with pydantic's errors), and the router's own 404 and 405."""

    async def on_failure(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Failure)
        status, body, headers = respond(exc, metrics)
        return JSONResponse(status_code=status, content=body, headers=dict(headers) or None)

    async def on_invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse(status_code=INVALID_BODY.status, content={"detail": jsonable_errors(exc)})

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        if exc.status_code == NOT_FOUND.status:
            return await on_failure(request, Failure(NOT_FOUND))
        if exc.status_code == METHOD_NOT_ALLOWED.status:
            given = (exc.headers or {}).get("Allow", "")
            allow = allowed_methods(request, [m.strip() for m in given.split(",") if m.strip()])
            return await on_failure(request, Failure(METHOD_NOT_ALLOWED, allow=allow))
        return JSONResponse(status_code=exc.status_code, content={"detail": exc.detail}, headers=exc.headers)

    app.add_exception_handler(Failure, on_failure)
    app.add_exception_handler(RequestValidationError, on_invalid)
    app.add_exception_handler(HTTPException, on_http)


METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(request: Request, given: list[str]) -> tuple[str, ...]:
    """Every method that some route of the app takes at the request's path, with ``given`` (what
    the refusing route named): Starlette's router stops at the first route whose path matches, so
    its Allow lists only that route's methods (GET of ``/config``, not PUT). Each route is asked
    through ``matches`` alone (FastAPI nests the included routers); one that takes any method
    (a mount: the static files) says nothing, and its own refusal names its methods."""
    methods = set(given)
    for route in request.app.router.routes:

        def takes(method: str, route=route) -> bool:
            return route.matches({**request.scope, "method": method})[0] == Match.FULL

        if not takes("NO-SUCH-METHOD"):
            methods |= {m for m in METHODS if takes(m)}
    return tuple(sorted(methods))


def jsonable_errors(exc: RequestValidationError) -> list[dict]:
    """Validation errors without the raw input (which may be bytes), with str contexts, and the
    user's own names in ``loc`` (e.g. an unknown key) cut short."""
    out = []
    for e in exc.errors():
        item = {k: v for k, v in e.items() if k not in ("input", "ctx", "url")}
        item["loc"] = [part if isinstance(part, int) else echo(part) for part in e.get("loc", ())]
        if "ctx" in e:
            item["ctx"] = {k: echo(v) for k, v in e["ctx"].items()}
        out.append(item)
    return out
