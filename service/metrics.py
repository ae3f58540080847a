"""Prometheus metrics of one app instance (own registry, so several apps can live in one process).

Names carry the ``skipvit_`` prefix, base units (seconds, images) and ``_total`` on counters.
Labels are bounded: ``route`` is one of the app's routes or ``other``, ``status`` an HTTP code,
``reason`` one of a fixed set, ``layer`` below the model's depth, ``point`` one of the bundle's.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

ROUTES = (
    "/",
    "/classify",
    "/pareto",
    "/config",
    "/fleet",
    "/metrics",
    "/livez",
    "/readyz",
    "/docs",
    "/openapi.json",
)
REASONS = (
    "queue_full",
    "deadline",
    "draining",
    "not_ready",
    "body_too_large",
    "too_many_files",
    "bad_image",
    "unknown_point",
    "unauthorized",
    "bad_request",
    "engine_gone",
    "overloaded",
    "slow_client",
    "too_many_connections",
)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LAYER_BUCKETS = tuple(range(25))  # exact up to 24 layers (ViT-L); deeper models share +Inf


def route_label(path: str) -> str:
    if path in ROUTES:
        return path
    return "/static" if path.startswith("/static/") else "other"


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict = {}  # labelled children, looked up once (``rejected``, ``answered``)
        self.requests = Counter(
            "skipvit_requests", "HTTP requests answered, by route and status", ["route", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "skipvit_request_duration_seconds",
            "time from request to response",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge("skipvit_inflight_requests", "requests being handled", registry=r)
        self.images = Counter(
            "skipvit_images", "images classified, by the point that served them", ["point"], registry=r
        )
        self.queue_wait = Histogram(
            "skipvit_queue_wait_seconds",
            "time a request waited for its batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "skipvit_batch_size", "images per forward pass", buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("skipvit_queue_depth", "images waiting in the queue", registry=r)
        self.loop_lag = Gauge(
            "skipvit_event_loop_lag_seconds",
            "how late the event loop runs what is due (decaying maximum)",
            registry=r,
        )
        self.gc_pause = Histogram(
            "skipvit_gc_pause_seconds",
            "pauses of Python's garbage collector in the server's process, by generation",
            ["generation"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.layers = Histogram(
            "skipvit_layers_executed", "layers run per image", buckets=LAYER_BUCKETS, registry=r
        )
        self.layer_rows = Counter("skipvit_layer_rows", "images that ran each layer", ["layer"], registry=r)
        self.rejections = Counter(
            "skipvit_rejections", "requests refused without compute, by reason", ["reason"], registry=r
        )
        self.switches = Counter("skipvit_config_switches", "changes of the active point", registry=r)
        self.active_point = Info(
            "skipvit_active_point", "the point that serves requests without ?point=", registry=r
        )
        self.engine_restarts = Counter(
            "skipvit_engine_restarts",
            "engine processes started to replace one that died or hung",
            registry=r,
        )
        self.ready = Gauge("skipvit_model_ready", "1 once the bundle is loaded and warmed up", registry=r)
        self._init_autopilot(r)
        self._init_fleet(r)
        for reason in REASONS:  # export zeros, so rate() works before the first rejection
            self.rejections.labels(reason)

    def _init_autopilot(self, r: CollectorRegistry) -> None:
        """The SLO autopilot's metrics (service.pilot)."""
        self.autopilot_on = Gauge(
            "skipvit_autopilot_enabled", "1 while the autopilot chooses the point", registry=r
        )
        self.autopilot_point = Info(
            "skipvit_autopilot_point",
            "the point the autopilot chose last (empty while it is off)",
            registry=r,
        )
        self.autopilot_decisions = Counter(
            "skipvit_autopilot_decisions",
            "autopilot decisions (four a second), by reason: start, hold, up, down, floor",
            ["reason"],
            registry=r,
        )
        self.autopilot_p95 = Gauge(
            "skipvit_autopilot_p95_seconds",
            "the chosen point's p95 latency: predicted by the autopilot's model, observed over the last "
            "2 s (NaN: too few requests), and the target; shed_at: the admission refuses what it "
            "expects to answer later than this",
            ["kind"],
            registry=r,
        )
        self.autopilot_rate = Gauge(
            "skipvit_autopilot_arrival_rate",
            "images/s arriving over the last 2 s, as the autopilot sees it",
            registry=r,
        )
        for reason in ("start", "hold", "up", "down", "floor"):
            self.autopilot_decisions.labels(reason)

    def _init_fleet(self, r: CollectorRegistry) -> None:
        """The fleet state's metrics (service.fleetsync)."""
        self.fleet_generation = Gauge(
            "skipvit_fleet_generation",
            "generation of the fleet state this replica applied last (0: none, its own settings)",
            registry=r,
        )
        self.fleet_adopted = Counter(
            "skipvit_fleet_adopted",
            "fleet states applied, by how they came: put (PUT /fleet), start (from the peers at "
            "start), sync (from the peers since)",
            ["via"],
            registry=r,
        )
        for via in ("put", "start", "sync"):
            self.fleet_adopted.labels(via)

    def init_layers(self, depth: int) -> None:
        for layer in range(depth):
            self.layer_rows.labels(str(layer))

    # -- batcher observer ------------------------------------------------------------------------
    def queued(self, images: int) -> None:
        self.queue_depth.set(images)

    def batch(self, images: int, waits: list[float]) -> None:
        self.batch_size.observe(images)
        for w in waits:
            self.queue_wait.observe(w)

    def rejected(self, reason: str) -> None:
        label = reason if reason in REASONS else "other"
        child = self._children.get(("rejected", label))
        if child is None:
            child = self._children[("rejected", label)] = self.rejections.labels(label)
        child.inc()

    def answered(self, route: str, status: int, seconds: float) -> None:
        """Count one answer of ``route`` (a ``route_label``) with ``status``, and its latency.

        These run for every request, each refusal at the headers included: the labelled children
        are looked up once per label set here, since prometheus_client's ``labels()`` (validation,
        a lock, a tuple key) costs more than the count itself (under overload, three ``labels()``
        calls were a third of the Python cost of a refusal)."""
        key = (route, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(route, str(status)),
                self.request_seconds.labels(route),
            )
        children[0].inc()
        children[1].observe(seconds)

    # -- model -----------------------------------------------------------------------------------
    def rows(self, point_per_row: Sequence[str], paths: Sequence[str]) -> None:
        """Per-image accounting of one batch: ``paths[b]`` is row b's '1'/'0' string per layer."""
        per_layer = [0] * (len(paths[0]) if paths else 0)
        per_point: dict[str, int] = {}
        for point, path in zip(point_per_row, paths, strict=True):
            self.layers.observe(path.count("1"))
            per_point[point] = per_point.get(point, 0) + 1
            for j, c in enumerate(path):
                per_layer[j] += c == "1"
        for j, count in enumerate(per_layer):
            if count:
                self.layer_rows.labels(str(j)).inc(count)
        for point, count in per_point.items():
            self.images.labels(point).inc(count)

    def autopilot_decided(
        self, decision, observed_p95_s: float | None, rate: float, shed_at_s: float | None = None
    ) -> None:
        self.autopilot_point.info({"point": decision.point})
        if shed_at_s is not None:
            self.autopilot_p95.labels("shed_at").set(shed_at_s)
        self.autopilot_decisions.labels(decision.reason).inc()
        self.autopilot_p95.labels("predicted").set(decision.predicted_p95_s)
        self.autopilot_p95.labels("observed").set(float("nan") if observed_p95_s is None else observed_p95_s)
        self.autopilot_rate.set(rate)

    def autopilot_enabled(self, target_s: float | None) -> None:
        self.autopilot_on.set(0 if target_s is None else 1)
        self.autopilot_p95.labels("target").set(float("nan") if target_s is None else target_s)
        if target_s is None:
            self.autopilot_point.info({"point": ""})

    def set_active(self, point: str, method: str, weights: str) -> None:
        self.active_point.info({"point": point, "method": method, "weights": weights})

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
