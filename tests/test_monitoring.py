"""Monitoring: deploy/prometheus.yml, the Grafana provisioning and the dashboard's PromQL.

Read and checked as text (no Prometheus or Grafana server is started): the scrape target is the
compose service, every panel uses the provisioned datasource, and every metric the dashboard
queries is in ``EXPORTED_METRICS``, which tests/service/test_api.py checks against the real app.
``promtool`` (Debian package ``prometheus``, installed by ``make test``) checks the config and
every query.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml  # dev extra (PyYAML)

from tests.test_deploy import COMPOSE_FILE, REPO, SERVICE, _environment, _service


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus.yml"
GRAFANA_PROVISIONING = REPO / "deploy" / "grafana" / "provisioning"
GRAFANA_DASHBOARDS = REPO / "deploy" / "grafana" / "dashboards"
DASHBOARD_FILE = GRAFANA_DASHBOARDS / "skipvit.json"

# Every metric the service exports on GET /metrics (service/metrics.py), histograms by their
# base name. The dashboard may query only these (test_dashboard_queries_only_exported_metrics);
# a test against the running app checks the other direction.
EXPORTED_METRICS: tuple[str, ...] = (
    "skipvit_requests_total",  # counter {route, status}
    "skipvit_request_duration_seconds",  # histogram {route}
    "skipvit_images_total",  # counter {point}
    "skipvit_queue_wait_seconds",  # histogram
    "skipvit_batch_size",  # histogram: images per batch
    "skipvit_queue_depth",  # gauge: images waiting
    "skipvit_layers_executed",  # histogram: layers per image
    "skipvit_layer_rows_total",  # counter {layer}
    "skipvit_rejections_total",  # counter {reason}
    "skipvit_config_switches_total",  # counter
    "skipvit_active_point_info",  # info {point, method, weights}
    "skipvit_model_ready",  # gauge
    "skipvit_inflight_requests",  # gauge
    "skipvit_engine_restarts_total",  # counter
    "skipvit_event_loop_lag_seconds",  # gauge
    "skipvit_gc_pause_seconds",  # histogram {generation}
    "skipvit_autopilot_enabled",  # gauge
    "skipvit_autopilot_point_info",  # info {point}
    "skipvit_autopilot_decisions_total",  # counter {reason}
    "skipvit_autopilot_p95_seconds",  # gauge {kind: predicted, observed, target}
    "skipvit_autopilot_arrival_rate",  # gauge: images/s
    "skipvit_fleet_generation",  # gauge: the fleet state applied last (0: none)
    "skipvit_fleet_adopted_total",  # counter {via: put, start, sync}
)

# =========================================================================== monitoring: helpers

# PromQL is read just well enough to list the series it selects: strings, label matchers,
# grouping clauses, ranges and Grafana variables are cut out first, and what is left that
# looks like an identifier, is not a keyword and is not called like a function is a metric.
_PROMQL_CUTS = (
    re.compile(r"\$\{[^}]*\}|\$\w+"),  # Grafana variables ($__rate_interval, ${point})
    re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`'),  # string literals
    re.compile(r"\{[^{}]*\}"),  # label matchers
    re.compile(r"\[[^\[\]]*\]"),  # range and subquery windows
    re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)"),  # label lists
)
_PROMQL_IDENT = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_PROMQL_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
    | {"group_left", "group_right", "inf", "nan", "start", "end"}
)
_HISTOGRAM_SERIES = re.compile(r"_(?:bucket|sum|count)$")
_PROMQL_RANGE = re.compile(r"\[\s*([0-9a-z]+)\s*(?::[^\]]*)?\]")
_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_DURATION_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def promql_metric_names(expr: str) -> set[str]:
    """Series names an expression selects, as written (``x_bucket`` stays ``x_bucket``)."""
    for cut in _PROMQL_CUTS:
        expr = cut.sub(" ", expr)
    return {m for m in _PROMQL_IDENT.findall(expr) if m.lower() not in _PROMQL_KEYWORDS}


def base_metric_name(series: str) -> str:
    """Histogram series back to the metric's name: ``x_bucket``/``x_sum``/``x_count`` -> ``x``."""
    return _HISTOGRAM_SERIES.sub("", series)


def duration_seconds(text: str) -> float:
    """A Prometheus duration (``5s``, ``1m30s``) in seconds."""
    parts = _DURATION_PART.findall(text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a Prometheus duration: {text!r}"
    return sum(int(n) * _DURATION_SECONDS[u] for n, u in parts)


def load_dashboard() -> dict:
    return json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))


def dashboard_panels(dashboard: dict) -> list[dict]:
    """All panels, including those folded inside collapsed rows."""
    out = []
    for panel in dashboard.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def panel_exprs(panel: dict) -> list[str]:
    return [t["expr"] for t in panel.get("targets", []) if t.get("expr")]


def dashboard_metric_names() -> set[str]:
    """Base names of every metric the provisioned dashboard queries (suffixes stripped)."""
    dashboard = load_dashboard()
    return {
        base_metric_name(name)
        for panel in dashboard_panels(dashboard)
        for expr in panel_exprs(panel)
        for name in promql_metric_names(expr)
    }


def _load_yaml(path: Path) -> dict:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path.relative_to(REPO)} must be a mapping"
    return data


def _provisioning(kind: str) -> list[dict]:
    files = sorted((GRAFANA_PROVISIONING / kind).glob("*.y*ml"))
    assert files, f"no Grafana {kind} provisioning files in {GRAFANA_PROVISIONING / kind}"
    docs = [_load_yaml(f) for f in files]
    for f, doc in zip(files, docs, strict=True):
        assert doc.get("apiVersion") == 1, f"{f.name}: Grafana provisioning needs apiVersion: 1"
    return docs


def _datasource_uids() -> set[str]:
    return {ds["uid"] for doc in _provisioning("datasources") for ds in doc.get("datasources", [])}


def _container_port(port) -> int:
    if isinstance(port, dict):
        return int(port["target"])
    return int(str(port).rsplit(":", 1)[-1].split("/")[0])


def _mounts(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of every volume entry, short or long syntax."""
    out = []
    for vol in service.get("volumes") or []:
        if isinstance(vol, dict):
            out.append((str(vol.get("source", "")), vol["target"], bool(vol.get("read_only"))))
        else:
            source, target, *mode = str(vol).split(":")
            out.append((source, target, bool(mode) and "ro" in mode[0].split(",")))
    return out


def _bind_source(source: str) -> Path | None:
    """Host path of a bind mount, or None for a named volume."""
    return (COMPOSE_FILE.parent / source).resolve() if source.startswith((".", "/")) else None


def _monitoring(compose: dict, name: str) -> dict:
    services = compose.get("services") or {}
    assert name in services, f"compose file has no {name!r} service: {sorted(services)}"
    return services[name]


# =========================================================================== monitoring: PromQL reader


def test_promql_metric_names_reader():
    expr = (
        'histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{route="/x", job=~"b|c"}[1m] offset 5m)))'
        " / on (job) group_left (x) scalar(b_total) > bool 1e3 and c:recorded"
        ' unless sum without (i) (d[$__rate_interval]) or label_replace(e, "f", "$1", "g", "(.*)")'
    )
    assert promql_metric_names(expr) == {"a_bucket", "b_total", "c:recorded", "d", "e"}
    assert {base_metric_name(n) for n in ("a_bucket", "a_sum", "a_count", "b_total")} == {"a", "b_total"}
    assert duration_seconds("1m30s") == 90 and duration_seconds("500ms") == 0.5
    with pytest.raises(AssertionError):
        duration_seconds("1 minute")


# =========================================================================== monitoring: compose


@pytest.mark.parametrize("name", ["prometheus", "grafana"])
def test_monitoring_images_are_pinned(compose, name):
    image = _monitoring(compose, name).get("image", "")
    assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+(@sha256:[0-9a-f]{64})?", image), (
        f"{name} image {image!r} should be pinned to a full version tag"
    )


def test_every_published_port_binds_loopback_only(compose):
    for name, service in (compose.get("services") or {}).items():
        for port in service.get("ports") or []:
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            assert host_ip == "127.0.0.1", f"{name} publishes {port!r} beyond loopback"


def test_monitoring_start_order_and_network(compose):
    prometheus, grafana = _monitoring(compose, "prometheus"), _monitoring(compose, "grafana")
    # Scrape only once the service answers; a dashboard without its datasource is useless.
    assert (prometheus.get("depends_on") or {}).get(SERVICE, {}).get("condition") == "service_healthy"
    assert "prometheus" in (grafana.get("depends_on") or {})
    networks = set(_service(compose).get("networks") or [])
    assert networks, "skipvit is on no named network"
    for name, service in (("prometheus", prometheus), ("grafana", grafana)):
        assert networks & set(service.get("networks") or []), f"{name} does not share skipvit's network"


def test_monitoring_mounts_config_read_only_and_data_in_named_volumes(compose):
    declared = set(compose.get("volumes") or {})
    expected = {
        "prometheus": {"/etc/prometheus/prometheus.yml": PROMETHEUS_CONFIG},
        "grafana": {"/etc/grafana/provisioning": GRAFANA_PROVISIONING},
    }
    for name, wanted in expected.items():
        mounts = _mounts(_monitoring(compose, name))
        binds = {target: (_bind_source(src), ro) for src, target, ro in mounts if _bind_source(src)}
        for target, host_path in wanted.items():
            assert binds.get(target) == (host_path.resolve(), True), (
                f"{name} must mount {host_path} at {target}:ro"
            )
        named = [src for src, _, _ in mounts if src and not _bind_source(src)]
        assert named, f"{name} keeps its data in no named volume (lost on `docker compose down`)"
        assert set(named) <= declared, f"{name} uses undeclared volumes {set(named) - declared}"


def test_grafana_dashboard_folder_is_mounted_where_the_provider_reads(compose):
    binds = {
        target: _bind_source(src)
        for src, target, ro in _mounts(_monitoring(compose, "grafana"))
        if _bind_source(src) and ro
    }
    providers = [p for doc in _provisioning("dashboards") for p in doc.get("providers", [])]
    assert providers, "no dashboard provider"
    for provider in providers:
        assert provider.get("type", "file") == "file", provider
        path = provider["options"]["path"]
        assert binds.get(path) == GRAFANA_DASHBOARDS.resolve(), (
            f"provider path {path} is not the dashboards mount"
        )


def test_grafana_access_is_safe_by_default(compose):
    env = _environment(_monitoring(compose, "grafana"))
    # Never a password written into the file: it comes from the environment.
    password = env.get("GF_SECURITY_ADMIN_PASSWORD", "")
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD(:?[-?].*)?\}", password), password
    if env.get("GF_AUTH_ANONYMOUS_ENABLED", "false").lower() == "true":
        assert env.get("GF_AUTH_ANONYMOUS_ORG_ROLE") == "Viewer", "anonymous users must be read-only"
    assert env.get("GF_USERS_ALLOW_SIGN_UP", "").lower() == "false"


def test_admin_token_file_lives_in_the_tmpfs(compose):
    service = _service(compose)
    token_file = _environment(service).get("SKIPVIT_ADMIN_TOKEN_FILE", "")
    assert token_file.startswith("/"), "SKIPVIT_ADMIN_TOKEN_FILE must be an absolute path in the container"
    if service.get("read_only") is True:
        tmpfs = service.get("tmpfs") or []
        mounts = [str(t).split(":", 1)[0] for t in ([tmpfs] if isinstance(tmpfs, str) else tmpfs)]
        assert any(token_file.startswith(m.rstrip("/") + "/") for m in mounts), (
            f"{token_file} is on the read-only root fs; put it under one of {mounts}"
        )


# =========================================================================== monitoring: Prometheus


@pytest.fixture(scope="module")
def prometheus_config() -> dict:
    return _load_yaml(PROMETHEUS_CONFIG)


def _skipvit_job(prometheus_config: dict, compose: dict) -> dict:
    """The one scrape job whose static targets include skipvit:<container port>."""
    ports = {_container_port(p) for p in _service(compose).get("ports") or []}
    targets = {f"{SERVICE}:{port}" for port in ports}
    jobs = [
        job
        for job in prometheus_config.get("scrape_configs") or []
        if any(targets & set(s.get("targets") or []) for s in job.get("static_configs") or [])
    ]
    assert len(jobs) == 1, f"want one scrape job with a target in {sorted(targets)}, found {len(jobs)}"
    return jobs[0]


def test_prometheus_scrapes_the_service(prometheus_config, compose):
    job = _skipvit_job(prometheus_config, compose)
    assert job.get("metrics_path", "/metrics") == "/metrics", job
    assert job.get("scheme", "http") == "http", job


def test_rate_windows_span_at_least_four_scrapes(prometheus_config, compose):
    # rate() over fewer than ~4 samples is noisy and goes blank on one missed scrape.
    job = _skipvit_job(prometheus_config, compose)
    interval = duration_seconds(job.get("scrape_interval") or prometheus_config["global"]["scrape_interval"])
    exprs = [e for p in dashboard_panels(load_dashboard()) for e in panel_exprs(p)]
    windows = {w for e in exprs for w in _PROMQL_RANGE.findall(e)}
    assert windows, "the dashboard uses no range windows"
    short = sorted(w for w in windows if duration_seconds(w) < 4 * interval)
    assert not short, f"windows {short} are shorter than 4 x scrape_interval ({interval}s)"


# =========================================================================== monitoring: Grafana


def test_grafana_datasource_is_the_compose_prometheus(compose):
    datasources = [ds for doc in _provisioning("datasources") for ds in doc.get("datasources", [])]
    uids = [ds.get("uid") for ds in datasources]
    assert all(uids) and len(uids) == len(set(uids)), f"datasources need unique fixed uids: {uids}"
    prometheus = [ds for ds in datasources if ds.get("type") == "prometheus"]
    assert len(prometheus) == 1, prometheus
    _monitoring(compose, "prometheus")  # the host name below is this compose service
    assert prometheus[0].get("url") == "http://prometheus:9090", prometheus[0]
    assert prometheus[0].get("access", "proxy") == "proxy", "browser access cannot reach the compose network"


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return load_dashboard()


def test_dashboard_is_well_formed(dashboard):
    assert dashboard.get("uid") and dashboard.get("title"), "dashboard needs a fixed uid and a title"
    assert dashboard.get("schemaVersion", 0) >= 36, dashboard.get("schemaVersion")
    assert dashboard.get("id") is None, "a provisioned dashboard must not carry a database id"
    panels = dashboard_panels(dashboard)
    ids = [p.get("id") for p in panels]
    assert all(isinstance(i, int) for i in ids) and len(ids) == len(set(ids)), (
        f"panel ids must be unique: {ids}"
    )
    boxes = []
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, f"{panel['title']!r} is off the 24-column grid"
        for other, (x, y, w, h) in boxes:
            overlaps = (
                pos["x"] < x + w and x < pos["x"] + pos["w"] and pos["y"] < y + h and y < pos["y"] + pos["h"]
            )
            assert not overlaps, f"panels {other!r} and {panel['title']!r} overlap"
        boxes.append((panel["title"], (pos["x"], pos["y"], pos["w"], pos["h"])))
        for expr in panel_exprs(panel):
            for pair in ("()", "[]", "{}"):
                assert expr.count(pair[0]) == expr.count(pair[1]), f"unbalanced {pair} in {expr!r}"


def test_every_panel_uses_a_provisioned_datasource(dashboard):
    uids = _datasource_uids()
    for panel in dashboard_panels(dashboard):
        if panel.get("type") == "row":
            continue
        refs = [panel.get("datasource")] + [t.get("datasource") for t in panel.get("targets", [])]
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for ref in refs:
            assert isinstance(ref, dict) and ref.get("uid") in uids, (
                f"panel {panel['title']!r} uses datasource {ref!r}, provisioned are {sorted(uids)}"
            )


def _panel(dashboard: dict, title_word: str) -> dict:
    found = [p for p in dashboard_panels(dashboard) if title_word in p.get("title", "").lower()]
    assert found, f"no panel titled with {title_word!r}"
    return found[0]


def _quantiles(exprs: list[str], series: str) -> set[str]:
    return {
        q for e in exprs for q in re.findall(rf"histogram_quantile\(\s*([\d.]+)\s*,[^;]*?\b{series}\b", e)
    }


def test_dashboard_has_the_required_panels(dashboard):
    def series(word: str) -> set[str]:
        return {n for e in panel_exprs(_panel(dashboard, word)) for n in promql_metric_names(e)}

    assert {"skipvit_images_total", "skipvit_requests_total"} <= series("throughput")
    latency = panel_exprs(_panel(dashboard, "latency"))
    assert _quantiles(latency, "skipvit_request_duration_seconds_bucket") >= {"0.5", "0.99"}, latency
    assert _quantiles(latency, "skipvit_queue_wait_seconds_bucket") >= {"0.99"}, latency
    assert {"skipvit_batch_size_sum", "skipvit_batch_size_count"} <= series("batch size")
    assert {"skipvit_layers_executed_sum", "skipvit_layers_executed_count"} <= series("layers per image")

    active = _panel(dashboard, "active point")
    assert "skipvit_active_point_info" in series("active point")
    # The point is a label, not a value: the panel must show that label's text.
    shown = json.dumps(active.get("options", {})) + json.dumps(
        [t.get("legendFormat") for t in active["targets"]]
    )
    assert re.search(r"\bpoint\b", shown), "the active point panel does not display the `point` label"


def test_dashboard_queries_only_exported_metrics():
    used = dashboard_metric_names()
    assert len(used) >= 8, f"suspiciously few metrics found in the dashboard: {sorted(used)}"
    unknown = used - set(EXPORTED_METRICS)
    assert not unknown, f"dashboard queries metrics the service does not export: {sorted(unknown)}"


def test_promtool_accepts_config_and_dashboard_queries(tmp_path):
    # The real PromQL parser (Debian package `prometheus`, installed by `make test`).
    promtool = shutil.which("promtool")
    assert promtool, (
        "promtool is missing; Hint: run `make test`, which installs the Debian package prometheus"
    )
    exprs = [e for p in dashboard_panels(load_dashboard()) for e in panel_exprs(p)]
    rules = tmp_path / "rules.yml"
    records = [{"record": f"dashboard:expr{i}", "expr": e} for i, e in enumerate(exprs)]
    rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}), encoding="utf-8")
    for args in (
        ["check", "config", "--syntax-only", str(PROMETHEUS_CONFIG)],
        ["check", "rules", str(rules)],
    ):
        proc = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
