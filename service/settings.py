"""Service settings, only from ``SKIPVIT_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from skipvit.service.auth import DEFAULT_TOKEN_FILE, MIN_TOKEN_CHARS
from skipvit.service.fleet import parse_peers
from skipvit.service.knobs import (
    MAX_BATCH_SIZE,
    MAX_QUEUE,
    MAX_WAIT_MS,
    PIPELINE_DEPTH,
    REQUEST_TIMEOUT_S,
    waits_past_timeout,
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SKIPVIT_",
        frozen=True,
        extra="ignore",
        hide_input_in_errors=True,  # never echo a token
    )

    bundle: Path = Field(Path("checkpoints/fashion-mnist"), description="bundle directory to serve")
    host: str = Field("127.0.0.1", description="bind address")
    port: int = Field(8000, ge=1, le=65535)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    engine: Literal["process", "thread"] = Field(
        "process", description="run the model in a child process (own GIL) or in a thread of this one"
    )
    engine_workers: int | None = Field(
        None,
        ge=1,
        le=64,
        description="engine processes a batch is split across (default: one per core on CPU, at most "
        "4; one on CUDA)",
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        le=256,
        description="torch intra-op threads in each engine process (default: the cores shared among "
        "them on CPU; torch's own on CUDA or for the thread engine)",
    )
    engine_heartbeat_timeout_s: float = Field(
        0.6,
        ge=0.05,
        le=60,
        description="an engine process whose heartbeat has not moved for this long (stopped, or wedged "
        "holding the GIL) is killed and replaced; a dead one is found at once",
    )
    engine_slice_timeout_s: float = Field(
        120.0,
        ge=0.1,
        description="an engine process that computes one slice of a batch for this long is taken as "
        "wedged (its heartbeat cannot tell a native call that never returns from a long batch), "
        "killed and replaced; its slice is retried once",
    )
    engine_respawn_backoff_s: float = Field(
        0.5,
        ge=0,
        le=60,
        description="wait before replacing an engine process that was lost before a healthy run; doubles "
        "with each such loss in a row, up to 30 s (one lost after a healthy run is replaced at once)",
    )
    engine_max_respawn_failures: int = Field(
        5,
        ge=1,
        le=1000,
        description="engine processes lost before a healthy run, in a row, after which the server "
        "gives up and exits non-zero (for a restart policy to start it afresh)",
    )
    compact: Literal["auto", "torch", "triton"] = Field(
        "auto", description="row compaction: Triton on CUDA (auto), or force the torch reference or Triton"
    )
    point: str | None = Field(None, description="point active at start (default: the bundle's default)")
    top_k: int = Field(3, ge=1, le=100)
    # dynamic batching (initial values; PUT /config changes them at runtime)
    max_batch_size: int = Field(
        MAX_BATCH_SIZE.default,
        **MAX_BATCH_SIZE.constraints(),
        description="images in one forward pass (32: under heavy load two batches take turns, one "
        "computing while the next gathers; see docs/serving.md)",
    )
    max_wait_ms: float = Field(
        MAX_WAIT_MS.default, **MAX_WAIT_MS.constraints(), description="longest wait for a batch to fill"
    )
    max_queue: int = Field(
        MAX_QUEUE.default, **MAX_QUEUE.constraints(), description="images waiting before 503 + Retry-After"
    )
    request_timeout_s: float = Field(
        REQUEST_TIMEOUT_S.default,
        **REQUEST_TIMEOUT_S.constraints(),
        description="a request not started by then gets 504",
    )
    pipeline_depth: int = Field(
        PIPELINE_DEPTH.default,
        **PIPELINE_DEPTH.constraints(),
        description="batches handed to the engine at once (2: the next one waits while one computes)",
    )
    # the SLO autopilot (PUT /config {"autopilot": ...} changes it at runtime)
    autopilot_p95_ms: float | None = Field(
        None,
        ge=0.1,
        le=60_000,
        description="turn the autopilot on at start with this p95 latency target (ms): requests without "
        "?point= are served at the most accurate point of the family that meets it",
    )
    autopilot_min_accuracy: float = Field(
        0.0, ge=0, le=1, description="the autopilot's accuracy floor (validation accuracy)"
    )
    autopilot_family: str | None = Field(
        None, description="a point of the family the autopilot chooses among (default: the active point)"
    )
    # the fleet: replicas that share one point (``skipvit fleet``, docs/scaling.md)
    fleet_peers: str | None = Field(
        None,
        description="the fleet's replicas, as host:port: a headless Service whose name resolves to every "
        "replica (skipvit-peers:8000), or a comma-separated list; at start and every fleet_sync_s this "
        "replica adopts the newest fleet state they hold",
    )
    fleet_sync_s: float = Field(
        5.0, ge=0.1, le=3600, description="how often to ask the peers for a newer fleet state"
    )
    fleet_timeout_s: float = Field(
        1.0, gt=0, le=60, description="how long to wait for a peer's answer (and for its name to resolve)"
    )
    # input limits
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="largest request body (413 above)")
    max_files: int = Field(64, ge=1, description="most images in one request")
    max_image_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="largest single upload")
    max_image_pixels: int = Field(4096 * 4096, ge=64, description="decoded-pixel cap (decompression bombs)")
    decode_budget_mb: int = Field(
        256,
        ge=16,
        description="memory the image decodes in progress may hold at once (a 4096x4096 RGBA PNG "
        "holds about 138 MB at its peak); others wait for room, until their deadline",
    )
    # admin
    admin_token: SecretStr | None = Field(None, description="bearer token of the mutating routes")
    admin_token_file: Path = Field(
        DEFAULT_TOKEN_FILE,
        description="where a generated token is written (owner-only) when admin_token is unset",
    )
    # shutdown
    drain_timeout_s: float = Field(15.0, ge=0, description="longest SIGTERM waits for in-flight requests")
    # slow clients and connections
    header_timeout_s: float = Field(
        10.0, gt=0, description="a request's headers must arrive within this (408 and closed after)"
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="a request's body must arrive within this after its headers (408 after)"
    )
    max_connections: int | None = Field(
        None,
        ge=1,
        description="client connections open at once (default: what the file-descriptor limit allows, "
        "less 64); beyond it a new connection evicts one slow to send its headers, else gets 503",
    )
    loop_sched: Literal["batch", "normal"] = Field(
        "batch",
        description="the event loop thread's Linux scheduling policy: batch (SCHED_BATCH: an arrival "
        "does not preempt the engine on a shared core; requests are read in passes) or normal",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_any_case(cls, level: object) -> object:
        return level.lower() if isinstance(level, str) else level  # INFO, as logging spells it, works too

    @field_validator("admin_token")
    @classmethod
    def _token_long_enough(cls, token: SecretStr | None) -> SecretStr | None:
        n = len(token.get_secret_value()) if token is not None else 0
        if 0 < n < MIN_TOKEN_CHARS:  # empty: unset, a token is generated
            raise ValueError(
                f"SKIPVIT_ADMIN_TOKEN has {n} characters; at least {MIN_TOKEN_CHARS} are needed. "
                "Hint: python -c 'import secrets; print(secrets.token_urlsafe(32))', or unset it "
                "and a token is generated into SKIPVIT_ADMIN_TOKEN_FILE"
            )
        return token

    @field_validator("fleet_peers")
    @classmethod
    def _peers_parse(cls, peers: str | None) -> str | None:
        try:
            parse_peers(peers)
        except ValueError as e:
            raise ValueError(f"SKIPVIT_FLEET_PEERS: {e}") from None
        return peers or None

    @model_validator(mode="after")
    def _wait_below_timeout(self) -> Settings:
        if waits_past_timeout(self.max_wait_ms, self.request_timeout_s):
            raise ValueError(
                f"SKIPVIT_MAX_WAIT_MS ({self.max_wait_ms:g}) must be below SKIPVIT_REQUEST_TIMEOUT_S "
                f"({self.request_timeout_s:g} s): every request that waits for company would time out"
            )
        return self

    @model_validator(mode="after")
    def _workers_need_processes(self) -> Settings:
        if self.engine == "thread" and (self.engine_workers or 1) > 1:
            raise ValueError(
                f"SKIPVIT_ENGINE_WORKERS={self.engine_workers} needs SKIPVIT_ENGINE=process: a thread "
                "engine is one forward at a time in this process"
            )
        return self
