"""Every answer other than 200, in one place: the kind of failure, its status, message, headers and
rejection reason, and where a refusal is counted.

Both halves of the app answer through here: the plain-ASGI ``/classify`` and the middleware
(``send_failure``), and the FastAPI routes (``install``, the handler of a raised ``Failure``).
``respond`` is the one place that counts a rejection (``skipvit_rejections_total{reason}``);
``failure_of`` is the one mapping of the errors the parts raise (batcher, engine, upload parsing)
to kinds. The body is ``{"detail": message}`` on both halves.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

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


RETRY_ELSEWHERE = "Hint: retry on another replica"
NOT_READY = Kind(503, "not_ready", "the model is not loaded yet; Hint: retry shortly", retry_after=True)
ENGINE_GONE = Kind(
    503,
    "engine_gone",
    "the model process running this request's batch was lost and is being restarted; "
    "Hint: retry after the Retry-After delay, or on another replica",
    retry_after=True,
)
DRAINING = Kind(  # a new /classify while draining, refused before its body is read
    503, "draining", f"the server is draining; {RETRY_ELSEWHERE}", retry_after=True, close=True
)
DROPPED = Kind(503, "draining", retry_after=True)  # queued (or computing) when the batcher stopped
SHUTTING_DOWN = Kind(  # uvicorn cancelled the request when its graceful-shutdown time was up
    503,
    None,
    f"the server shut down before this request was answered; {RETRY_ELSEWHERE}",
    retry_after=True,
    close=True,
)
QUEUE_FULL = Kind(503, "queue_full", retry_after=True)
OVERLOADED = Kind(503, "overloaded", retry_after=True)  # the expected wait passes the deadline
DEADLINE = Kind(504, "deadline")
BODY_TOO_LARGE = Kind(413, "body_too_large", close=True)  # the whole body, cut off by the middleware
IMAGE_TOO_LARGE = Kind(413, "body_too_large")  # one upload of the body
TOO_MANY_FILES = Kind(413, "too_many_files")
IMAGE_BOMB = Kind(413, "bad_image")  # declares more pixels than the cap
BAD_IMAGE = Kind(422, "bad_image")
BAD_REQUEST = Kind(422, "bad_request")
UNKNOWN_POINT = Kind(404, "unknown_point")
UNAUTHORIZED = Kind(
    401,
    "unauthorized",
    "missing or wrong admin token; Hint: send 'Authorization: Bearer <token>' with the "
    "token from SKIPVIT_ADMIN_TOKEN or the server's token file",
    headers=(("www-authenticate", "Bearer"),),
)
BAD_CONFIG = Kind(422)  # a PUT /config whose values do not fit together
METHOD_NOT_ALLOWED = Kind(
    405, None, "Method Not Allowed; Hint: POST images as multipart/form-data", headers=(("allow", "POST"),)
)
MODEL_FAILED = Kind(500)  # the engine raised on the request's batch


class Failure(Exception):
    """Answer ``kind`` with ``message`` (default: the kind's); ``retry_after`` in seconds."""

    def __init__(self, kind: Kind, message: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message or kind.message)
        self.kind, self.retry_after = kind, retry_after

    def headers(self) -> list[tuple[str, str]]:
        out = list(self.kind.headers)
        if self.kind.retry_after:
            out.append(("retry-after", str(int(self.retry_after or 1))))
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
    service answers passes here, from either half of the app."""
    if failure.kind.reason is not None:
        metrics.rejected(failure.kind.reason)
    return failure.kind.status, {"detail": str(failure)}, failure.headers()


async def send_failure(send, failure: Failure, metrics: Metrics) -> None:
    """Answer ``failure`` on a plain ASGI ``send``."""
    status, body, headers = respond(failure, metrics)
    await send_json(send, status, body, [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers])


def install(app: FastAPI, metrics: Metrics) -> None:
    """Answer a ``Failure`` raised by a FastAPI route (or dependency), and a request that fails
    validation (422 with pydantic's errors)."""

    async def on_failure(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Failure)
        status, body, headers = respond(exc, metrics)
        return JSONResponse(status_code=status, content=body, headers=dict(headers) or None)

    async def on_invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse(status_code=422, content={"detail": jsonable_errors(exc)})

    app.add_exception_handler(Failure, on_failure)
    app.add_exception_handler(RequestValidationError, on_invalid)


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
