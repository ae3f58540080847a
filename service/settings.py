"""Service settings, only from ``SKIPVIT_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SKIPVIT_", frozen=True, extra="ignore")

    bundle: Path = Field(Path("checkpoints/fashion-mnist"), description="bundle directory to serve")
    host: str = Field("127.0.0.1", description="bind address")
    port: int = Field(8000, ge=1, le=65535)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    point: str | None = Field(None, description="point active at start (default: the bundle's default)")
    top_k: int = Field(3, ge=1, le=100)
    max_files: int = Field(64, ge=1, description="most images in one request")
    max_image_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="largest single upload")
    max_image_pixels: int = Field(4096 * 4096, ge=64, description="decoded-pixel cap (decompression bombs)")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
