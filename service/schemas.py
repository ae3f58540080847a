"""Response shapes of the HTTP API (the contract in DESIGN.md)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


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


class PointOut(BaseModel):
    id: str
    method: str
    weights: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    description: str = ""


class ParetoResponse(BaseModel):
    active: str
    points: list[PointOut]


class ConfigResponse(BaseModel):
    point: str
