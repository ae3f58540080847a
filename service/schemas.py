"""Response shapes of the HTTP API (the contract in docs/design.md).

``/classify`` is the hot route: its answer is built as JSON bytes straight from the engine's rows
(``classify_body``), skipping the response model's validation; ``ClassifyResponse`` still
documents it in OpenAPI, and a test checks that every body validates against it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from skipvit.service.knobs import MAX_BATCH_SIZE, MAX_QUEUE, MAX_WAIT_MS


class TopK(BaseModel):
    label: str
    index: int
    probability: float


class ClassifyResult(BaseModel):
    label: str
    index: int
    probability: float
    top_k: list[TopK]
    layers_executed: int
    path: str


class ClassifyResponse(BaseModel):
    point: str
    results: list[ClassifyResult]


def encode_row(r) -> dict[str, Any]:
    """A ``service.engine.RowResult`` as one ``ClassifyResult`` (probabilities rounded to 6 places)."""
    return {
        "label": r.label,
        "index": r.index,
        "probability": round(r.probability, 6),
        "top_k": [{"label": lbl, "index": i, "probability": round(p, 6)} for lbl, i, p in r.top_k],
        "layers_executed": r.layers_executed,
        "path": r.path,
    }


def classify_body(point: str, rows: Sequence) -> bytes:
    """The ``ClassifyResponse`` JSON for ``rows`` (``RowResult``s, in request order)."""
    body = {"point": point, "results": [encode_row(r) for r in rows]}
    return json.dumps(body, separators=(",", ":")).encode()  # compact, as the other routes answer


class PointOut(BaseModel):
    id: str
    method: str
    weights: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    description: str = ""
    active: bool = False
    serving: str = ""  # how the server batches this point


class ParetoResponse(BaseModel):
    active: str
    points: list[PointOut]


class ConfigResponse(BaseModel):
    point: str
    max_batch_size: int
    max_wait_ms: float
    max_queue: int
    request_timeout_s: float


def _one_field_set(schema: dict[str, Any]) -> None:
    """The JSON schema says what the validator checks: at least one field that is not null."""
    schema["anyOf"] = [
        {"required": [name], "properties": {name: {"not": {"type": "null"}}}} for name in schema["properties"]
    ]


class ConfigUpdate(BaseModel):
    """PUT /config: any of the fields; the others keep their values. Strict: ``true`` is not a
    batch size, nor ``"7"`` a wait."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_one_field_set)

    point: str | None = Field(None, min_length=1, max_length=200)
    max_batch_size: int | None = Field(None, **MAX_BATCH_SIZE.constraints())
    max_wait_ms: float | None = Field(None, **MAX_WAIT_MS.constraints())
    max_queue: int | None = Field(None, **MAX_QUEUE.constraints())

    @model_validator(mode="after")
    def _not_empty(self) -> ConfigUpdate:
        if all(v is None for v in self.model_dump().values()):
            raise ValueError('nothing to change; Hint: send e.g. {"point": "static"}')
        return self


class LivezResponse(BaseModel):
    status: str  # "alive", or "failed" (503) with the reason in ``error``
    error: str | None = None


class EngineProcesses(BaseModel):
    serving: int
    wanted: int


class ReadyzResponse(BaseModel):
    ready: bool
    draining: bool
    status: Literal["healing"] | None = None  # an engine process is being replaced
    engine_processes: EngineProcesses | None = None  # while healing: how many serve, of how many
    error: str | None = None


class FieldError(BaseModel):
    """One of pydantic's validation errors, as the 422 of a body that does not validate lists them."""

    type: str
    loc: list[str | int]
    msg: str
    ctx: dict[str, Any] | None = None


class ErrorBody(BaseModel):
    """Every answer other than 200 (``service.failures``): what was wrong and what to do, or the
    list of validation errors."""

    detail: str | list[FieldError]
