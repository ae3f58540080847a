"""The API's contract: every answer each route can give, written into the OpenAPI schema from one
table.

Why a table: FastAPI documents a route's 200 (and a 422 of its own), not the answers that come
from elsewhere: ``service.failures`` (raised by the route, ``/classify`` or its dependencies), the
middleware (413 for any body past the limit), the router (405) and the connection guard below the
app (``service.connections``: 408 for a slow client, 503 for too many connections). A client, or
schemathesis, that reads the schema would take each of those for a broken contract. So:

- ``ANSWERS`` maps each documented operation to the ``Kind``\\s it can answer; ``EVERY_ROUTE``
  and ``GUARD`` apply to all of them; ``ELSEWHERE`` are kinds no documented route answers (the
  API's description names them);
- ``document`` writes, per operation and status, the description (the kinds' ``doc``), the body
  (``ErrorBody``, or the route's own model beside it, as the probes' 503) and the headers those
  answers carry (required when every answer of that status carries it);
- ``document`` refuses an operation the table does not name, and a test checks that every kind in
  ``service.failures`` appears here: a new route or kind cannot go undocumented silently.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from skipvit.service import connections
from skipvit.service.failures import (
    AUTOPILOT_CONFLICT,
    BAD_CONFIG,
    BAD_IMAGE,
    BAD_REQUEST,
    BODY_TOO_LARGE,
    DEADLINE,
    DRAINING,
    DROPPED,
    ENGINE_GONE,
    FLEET_STALE,
    IMAGE_BOMB,
    IMAGE_TOO_LARGE,
    INVALID_BODY,
    METHOD_NOT_ALLOWED,
    MODEL_FAILED,
    NOT_FOUND,
    NOT_MULTIPART,
    NOT_READY,
    OVERLOADED,
    QUEUE_FULL,
    SHUTTING_DOWN,
    TOO_MANY_FILES,
    UNAUTHORIZED,
    UNKNOWN_POINT,
    Kind,
)
from skipvit.service.schemas import ErrorBody

ANSWERS: dict[tuple[str, str], tuple[Kind, ...]] = {
    ("post", "/classify"): (
        BAD_REQUEST,
        NOT_MULTIPART,
        BAD_IMAGE,
        IMAGE_TOO_LARGE,
        TOO_MANY_FILES,
        IMAGE_BOMB,
        UNKNOWN_POINT,
        NOT_READY,
        ENGINE_GONE,
        DRAINING,
        DROPPED,
        SHUTTING_DOWN,
        QUEUE_FULL,
        OVERLOADED,
        DEADLINE,
        MODEL_FAILED,
    ),
    ("get", "/pareto"): (NOT_READY,),
    ("get", "/config"): (NOT_READY,),
    ("put", "/config"): (
        UNAUTHORIZED,
        INVALID_BODY,
        BAD_CONFIG,
        UNKNOWN_POINT,
        AUTOPILOT_CONFLICT,
        NOT_READY,
    ),
    ("put", "/fleet"): (
        UNAUTHORIZED,
        INVALID_BODY,
        BAD_CONFIG,
        UNKNOWN_POINT,
        AUTOPILOT_CONFLICT,
        FLEET_STALE,
        NOT_READY,
    ),
    ("get", "/livez"): (),  # its own 503 (the bundle failed to load, the engine exited): the route's model
    ("get", "/readyz"): (),  # likewise: not ready, draining or failed
}
EVERY_ROUTE = (METHOD_NOT_ALLOWED, BODY_TOO_LARGE)  # the router, and the middleware's body limit
ELSEWHERE = (NOT_FOUND,)  # a path that is no route


@dataclass(frozen=True)
class Answer:
    """One answer as the docs see it: its status, when it is given, the headers it carries."""

    status: int
    doc: str
    headers: frozenset[str] = frozenset()


def answer_of(kind: Kind) -> Answer:
    names = {name for name, _ in kind.headers}
    names |= {"retry-after"} if kind.retry_after else set()
    names |= {"allow"} if kind.allow else set()
    return Answer(kind.status, kind.doc, frozenset(names))


def canned_answer(raw: bytes, doc: str) -> Answer:
    """The ``Answer`` of one of ``service.connections``' canned HTTP answers."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    names = {line.partition(":")[0].strip().lower() for line in head[1:]}
    return Answer(int(head[0].split()[1]), doc, frozenset(names & set(HEADERS)))


HEADERS = {  # the headers the docs name: (name, schema, description)
    "retry-after": ("Retry-After", {"type": "integer"}, "seconds to wait before a retry"),
    "www-authenticate": ("WWW-Authenticate", {"type": "string"}, "Bearer"),
    "allow": ("Allow", {"type": "string"}, "the methods this path takes"),
}
GUARD = (  # answered below the app, before routing: any request may get them
    canned_answer(
        connections.HEADER_TIMEOUT, "the headers did not arrive in time (SKIPVIT_HEADER_TIMEOUT_S)"
    ),
    canned_answer(connections.BODY_TIMEOUT, "the body did not arrive in time (SKIPVIT_BODY_TIMEOUT_S)"),
    canned_answer(connections.TOO_MANY, "too many open connections"),
)
ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}


def answers_of(operation: tuple[str, str]) -> dict[int, list[Answer]]:
    """Every answer ``operation`` can give but its 200, by status."""
    out: dict[int, list[Answer]] = defaultdict(list)
    for answer in (*(answer_of(k) for k in (*ANSWERS[operation], *EVERY_ROUTE)), *GUARD):
        out[answer.status].append(answer)
    return dict(sorted(out.items()))


def document(schema: dict) -> dict:
    """Write the error answers of every operation into ``schema`` (FastAPI's, with /classify), the
    ``ErrorBody`` model and a note on the answers of no route."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    body = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(body.pop("$defs", {}))
    components["ErrorBody"] = body
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if (method, path) not in ANSWERS:
                raise KeyError(
                    f"{method.upper()} {path} is not in service.contract.ANSWERS; "
                    "Hint: list the failure kinds it can answer there"
                )
            operation["responses"] = responses(operation["responses"], answers_of((method, path)))
    for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's own 422, replaced above
        components.pop(unused, None)
    notes = "; ".join(f"{k.status} ({k.doc})" for k in ELSEWHERE)
    schema["info"]["description"] = (
        f"{schema['info'].get('description', '')}\n\nEvery answer other than 200 has the body ErrorBody "
        f"(`detail`: what was wrong, ending in a hint). Also answered on any path: {notes}."
    ).strip()
    return schema


def responses(own: dict, answers: dict[int, list[Answer]]) -> dict:
    """The responses of one operation: ``own`` (FastAPI's) less its default 422, with ``answers``.
    A status the route documents itself keeps its model, with ``ErrorBody`` beside it."""
    out = {code: r for code, r in own.items() if not (code == "422" and "HTTPValidationError" in str(r))}
    for status, group in answers.items():
        mine = out.get(str(status))
        docs = list(dict.fromkeys(a.doc for a in group))
        schema: dict = ERROR_REF
        if mine is not None:
            docs.insert(0, mine.get("description", ""))
            theirs = mine.get("content", {}).get("application/json", {}).get("schema")
            schema = {"anyOf": [theirs, ERROR_REF]} if theirs else ERROR_REF
        names = sorted(set().union(*(a.headers for a in group)))
        headers = {
            HEADERS[name][0]: {
                "description": HEADERS[name][2],
                "required": mine is None and all(name in a.headers for a in group),
                "schema": HEADERS[name][1],
            }
            for name in names
        }
        out[str(status)] = {
            "description": "; ".join(d for d in docs if d),
            "content": {"application/json": {"schema": schema}},
            **({"headers": headers} if headers else {}),
        }
    return dict(sorted(out.items()))
