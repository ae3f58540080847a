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
    autopilot_family: list[str] | None = None  # the points the autopilot chooses among, while it is on


class AutopilotStatus(BaseModel):
    p95_ms: float  # the target
    min_accuracy: float  # the floor (validation accuracy where the bundle records it)
    family: list[str]  # the points it chooses among: one batch key
    warming_up: bool  # timing the family's points; no decision yet
    point: str | None = None  # its last choice
    reason: str | None = None  # why: start, hold, up, down, floor
    predicted_p95_ms: float | None = None  # of that point, at the load it saw (None: past capacity)
    observed_p95_ms: float | None = None  # over the last 2 s (None: too few requests)
    arrival_rate: float = 0.0  # images/s over the last 2 s
    shed_at_ms: float | None = None  # admission refuses what it expects to answer later than this
    shed_waiting: int | None = None  # ... and lets this many images wait at most (null: no cap)
    vouched: dict[str, float] = {}  # point -> the rate (images/s) up to which it measured inside the target
    stopped: str | None = None  # why the autopilot stopped deciding (an error; turn it off and on)


class FleetStatus(BaseModel):
    """The fleet state this replica applied last (``skipvit fleet``)."""

    generation: int
    set_at: float  # Unix seconds, by the setter's clock
    set_by: str
    config: dict[str, Any]  # the PUT /config body every replica of the fleet serves


class ConfigResponse(BaseModel):
    point: str
    max_batch_size: int
    max_wait_ms: float
    max_queue: int
    request_timeout_s: float
    autopilot: AutopilotStatus | None = None  # None: off
    fleet: FleetStatus | None = None  # None: no fleet state applied (this replica's own settings)


class AutopilotUpdate(BaseModel):
    """Turn the autopilot on (or change its target): serve requests without ``?point=`` at the most
    accurate point of a family whose predicted p95 meets ``p95_ms``, never below ``min_accuracy``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    p95_ms: float = Field(ge=0.1, le=60_000)
    min_accuracy: float = Field(0.0, ge=0, le=1)
    family: str | None = Field(
        None, min_length=1, max_length=200, description="a point of the family (default: the active point)"
    )


def _one_field_set(schema: dict[str, Any]) -> None:
    """The JSON schema says what the validator checks: at least one field that is not null, or
    ``autopilot`` given (null turns it off)."""
    schema["anyOf"] = [
        {"required": [name]}
        if name == "autopilot"
        else {"required": [name], "properties": {name: {"not": {"type": "null"}}}}
        for name in schema["properties"]
    ]


class ConfigUpdate(BaseModel):
    """PUT /config: any of the fields; the others keep their values. Strict: ``true`` is not a
    batch size, nor ``"7"`` a wait."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_one_field_set)

    point: str | None = Field(None, min_length=1, max_length=200)
    max_batch_size: int | None = Field(None, **MAX_BATCH_SIZE.constraints())
    max_wait_ms: float | None = Field(None, **MAX_WAIT_MS.constraints())
    max_queue: int | None = Field(None, **MAX_QUEUE.constraints())
    autopilot: AutopilotUpdate | None = Field(None, description="the SLO autopilot; null turns it off")

    @property
    def autopilot_given(self) -> bool:
        """``autopilot`` was in the body (null included: turn it off)."""
        return "autopilot" in self.model_fields_set

    @model_validator(mode="after")
    def _not_empty(self) -> ConfigUpdate:
        if all(v is None for v in self.model_dump().values()) and not self.autopilot_given:
            raise ValueError('nothing to change; Hint: send e.g. {"point": "static"}')
        return self


class FleetUpdate(BaseModel):
    """PUT /fleet: a fleet state. Applied as ``config`` would be by PUT /config if it is newer than
    the one the replica holds (by ``generation``, then ``set_at``); the same one again changes
    nothing; an older one is refused (409)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    generation: int = Field(ge=1, le=2**53)
    set_at: float = Field(0.0, ge=0, le=1e11, description="Unix seconds; breaks a tie of generations")
    set_by: str = Field("", max_length=200, description="who set it, for the record")
    config: ConfigUpdate


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
