"""The real app (lifespan and all) under FastAPI's TestClient, on the tiny bundle."""

from __future__ import annotations

import os
import re
import shutil
import signal
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from skipvit.service.app import create_app
from skipvit.service.engine import Engine
from skipvit.service.schemas import ClassifyResponse
from skipvit.service.settings import Settings
from skipvit.service.state import service_state
from skipvit.service.worker import EngineGone
from tests.service.helpers import bar_image, files, png_bytes, wait_ready

TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def client(tiny_bundle):
    app = create_app(
        Settings(
            bundle=tiny_bundle,
            device="cpu",
            max_files=4,
            max_image_bytes=64 * 1024,
            max_body_bytes=200 * 1024,
            admin_token=TOKEN,
        )
    )
    with TestClient(app) as c:
        yield wait_ready(c)


@pytest.fixture(scope="module")
def gates(tiny_gate_bundle):
    app = create_app(Settings(bundle=tiny_gate_bundle, device="cpu", admin_token=TOKEN))
    with TestClient(app) as c:
        yield wait_ready(c)


def test_health(client):
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").json() == {"ready": True, "draining": False}


def test_classify_shape_and_order(client):
    blobs = [png_bytes(bar_image(k)) for k in (0, 1, 2, 3)]
    r = client.post("/classify", files=files(*blobs))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    ClassifyResponse.model_validate_json(r.content)  # the body matches what OpenAPI documents
    body = r.json()
    assert body["point"] == "static" and len(body["results"]) == 4
    for res in body["results"]:
        assert set(res) == {"label", "index", "probability", "top_k", "layers_executed", "path"}
        assert res["path"] == "1111" and res["layers_executed"] == 4
        assert len(res["top_k"]) == 3 and res["top_k"][0]["index"] == res["index"]
        assert 0 < res["probability"] <= 1
    # Order: each request of one image agrees with its slot in the batch.
    for k, blob in enumerate(blobs):
        single = client.post("/classify", files=files(blob)).json()["results"][0]
        assert single["index"] == body["results"][k]["index"]
        assert single["probability"] == pytest.approx(body["results"][k]["probability"], abs=1e-5)


def test_point_query(client):
    blob = png_bytes(bar_image(1))
    assert client.post("/classify?point=static", files=files(blob)).json()["point"] == "static"
    r = client.post("/classify?point=nope", files=files(blob))
    assert r.status_code == 404 and "static" in r.json()["detail"]
    for query in (
        "point=",
        "point=nope&point=static",
        "point=static&point=",
    ):  # never silently the active one
        r = client.post(f"/classify?{query}", files=files(blob))
        assert r.status_code == 422 and "Hint" in r.json()["detail"], query


@pytest.mark.parametrize(
    "payload",
    [
        {"files": [("files", ("a.txt", b"not an image at all", "text/plain"))]},
        {"files": [("files", ("a.png", b"\x89PNG\r\n\x1a\n\x00\x00", "image/png"))]},
        {"files": [("files", ("a.png", b"", "image/png"))]},
        {"data": {"x": "1"}},
        {"content": b"raw bytes", "headers": {"content-type": "application/octet-stream"}},
        {"files": [("other", ("a.png", b"x", "image/png"))]},
    ],
)
def test_malformed_uploads_are_4xx_with_a_message(client, payload):
    r = client.post("/classify", **payload)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["detail"]


def test_limits(client):
    blob = png_bytes(bar_image(0))
    r = client.post("/classify", files=files(*[blob] * 5))
    assert r.status_code == 413 and "limit is 4" in r.json()["detail"]
    big = png_bytes(np.random.default_rng(0).integers(0, 255, (400, 400), dtype=np.uint8))
    r = client.post("/classify", files=files(big))
    assert r.status_code == 413


def test_pareto_and_config(client):
    body = client.get("/pareto").json()
    assert body["active"] == "static"
    assert [p["id"] for p in body["points"]] == ["static"]
    assert body["points"][0]["metrics"]["split"] == "test"
    config = client.get("/config").json()
    assert config["point"] == "static" and config["max_batch_size"] == 32 and config["max_wait_ms"] == 5.0


def test_openapi_lists_the_routes(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/classify", "/pareto", "/config", "/livez", "/readyz"} <= set(paths)
    classify = paths["/classify"]["post"]
    assert [p["name"] for p in classify["parameters"]] == ["point"]
    assert "multipart/form-data" in classify["requestBody"]["content"]
    assert classify["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ClassifyResponse"
    )


def test_classify_takes_only_post(client):
    r = client.get("/classify")
    assert r.status_code == 405 and r.headers["allow"] == "POST" and "POST" in r.json()["detail"]


def test_a_failed_batch_is_a_500_with_the_reason_and_the_next_request_is_served(tiny_bundle, monkeypatch):
    settings = Settings(bundle=tiny_bundle, device="cpu", admin_token=TOKEN, engine="thread")
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        wait_ready(c)
        real = Engine.predict

        def broken(self, images, points=None):
            raise RuntimeError("out of memory")

        monkeypatch.setattr(Engine, "predict", broken)
        r = c.post("/classify", files=files(png_bytes(bar_image(0))))
        assert r.status_code == 500 and "out of memory" in r.json()["detail"]
        monkeypatch.setattr(Engine, "predict", real)
        assert c.post("/classify", files=files(png_bytes(bar_image(0)))).status_code == 200
        assert 'skipvit_requests_total{route="/classify",status="500"} 1.0' in c.get("/metrics").text


def test_a_batch_whose_engine_process_was_lost_is_503_and_the_server_lives_on(tiny_bundle, monkeypatch):
    settings = Settings(bundle=tiny_bundle, device="cpu", admin_token=TOKEN, engine="thread")
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        real = Engine.predict

        def gone(self, images, points=None):
            raise EngineGone("engine process skipvit-engine-0 was lost: killed by SIGKILL")

        monkeypatch.setattr(Engine, "predict", gone)
        for _ in range(2):  # each batch that could not be retried hears 503 with Retry-After
            r = c.post("/classify", files=files(png_bytes(bar_image(0))))
            assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
            assert "restarted" in r.json()["detail"]
        assert c.get("/livez").status_code == 200 and c.get("/readyz").status_code == 200
        monkeypatch.setattr(Engine, "predict", real)
        assert c.post("/classify", files=files(png_bytes(bar_image(0)))).status_code == 200
        text = c.get("/metrics").text
        assert 'skipvit_rejections_total{reason="engine_gone"} 2.0' in text
        assert "skipvit_model_ready 1.0" in text


def test_when_the_engine_cannot_be_healed_every_probe_and_request_says_so(tiny_bundle):
    settings = Settings(bundle=tiny_bundle, device="cpu", admin_token=TOKEN, engine="thread")
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        service_state(c.app).give_up("engine process skipvit-engine-0 failed 5 starts in a row")
        r = c.post("/classify", files=files(png_bytes(bar_image(0))))
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert c.get("/livez").status_code == 503
        r = c.get("/readyz")
        assert r.status_code == 503 and "5 starts in a row" in r.json()["error"]
        assert "skipvit_model_ready 0.0" in c.get("/metrics").text


def test_shutdown_ends_an_engine_process_that_hangs(tiny_bundle):
    """A batch stuck in a hung engine process does not hold shutdown forever: past the drain's
    bound the process is ended, and the request in it hears 503. (The heartbeat timeout is long
    here: otherwise the supervisor would replace the stopped process within a second.)"""
    settings = Settings(
        bundle=tiny_bundle,
        device="cpu",
        admin_token=TOKEN,
        drain_timeout_s=0.5,
        engine_heartbeat_timeout_s=60,
    )
    answers = []
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        engine = service_state(c.app).engine
        os.kill(engine.processes[0].pid, signal.SIGSTOP)  # hung, not dead
        entered, predict = threading.Event(), engine.predict

        def entering(images, points=None, deadline=None):
            entered.set()
            return predict(images, points, deadline)

        engine.predict = entering
        asking = threading.Thread(
            target=lambda: answers.append(c.post("/classify", files=files(png_bytes(bar_image(0)))))
        )
        asking.start()
        assert entered.wait(10)  # the batch is on its way to the hung engine process
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 15  # drain bound + the engine's close (join, then kill)
    asking.join(10)
    assert len(answers) == 1 and answers[0].status_code == 503, answers


def test_rl_point_is_served_with_its_paths(tiny_rl_bundle):
    app = create_app(Settings(bundle=tiny_rl_bundle, device="cpu"))
    blobs = [png_bytes(bar_image(k)) for k in range(4)]
    with TestClient(app) as c:
        wait_ready(c)
        assert {p["id"] for p in c.get("/pareto").json()["points"]} == {"static", "rl"}
        body = c.post("/classify?point=rl", files=files(*blobs)).json()
        assert body["point"] == "rl"
        for res in body["results"]:
            assert len(res["path"]) == 4 and res["layers_executed"] == res["path"].count("1")
        assert all(
            r["path"] == "1111"
            for r in c.post("/classify?point=static", files=files(*blobs)).json()["results"]
        )


def test_admin_routes_need_the_token(client):
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": TOKEN},
        {"Authorization": "Basic x"},
    ):
        r = client.put("/config", json={"point": "static"}, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", headers
    assert client.put("/config", json={"point": "static"}, headers=ADMIN).status_code == 200


def test_put_config_validates(client):
    r = client.put("/config", json={"point": "nope"}, headers=ADMIN)
    assert r.status_code == 404 and "static" in r.json()["detail"]
    for body in (
        {},
        {"point": 3},
        {"max_batch_size": 0},
        {"colour": "red"},
        "not json",
        {"max_wait_ms": -1},
        {"max_batch_size": True},
        {"max_wait_ms": "7"},
        {"max_queue": 2.0},
    ):
        r = client.put("/config", json=body, headers=ADMIN)
        assert r.status_code == 422, (body, r.text)
    r = client.put("/config", content=b"{", headers={**ADMIN, "content-type": "application/json"})
    assert r.status_code == 422


def test_the_wait_for_company_stays_below_the_request_timeout(tiny_bundle):
    with pytest.raises(ValueError, match="must be below SKIPVIT_REQUEST_TIMEOUT_S"):
        Settings(bundle=tiny_bundle, max_wait_ms=2000, request_timeout_s=1)
    app = create_app(Settings(bundle=tiny_bundle, device="cpu", admin_token=TOKEN, request_timeout_s=1))
    with TestClient(app) as c:
        wait_ready(c)
        r = c.put("/config", json={"max_wait_ms": 1000, "point": "static"}, headers=ADMIN)
        assert r.status_code == 422 and "request timeout" in r.json()["detail"]
        assert c.get("/config").json()["max_wait_ms"] == 5.0  # nothing of the refused update applied
        assert c.put("/config", json={"max_wait_ms": 999}, headers=ADMIN).status_code == 200


def test_knobs_change_at_runtime(client):
    r = client.put("/config", json={"max_batch_size": 8, "max_wait_ms": 1.5}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["max_batch_size"] == 8 and r.json()["max_wait_ms"] == 1.5
    assert client.get("/config").json()["max_batch_size"] == 8
    blobs = [png_bytes(bar_image(k)) for k in range(4)]
    assert client.post("/classify", files=files(*blobs)).status_code == 200
    client.put("/config", json={"max_batch_size": 32, "max_wait_ms": 5.0}, headers=ADMIN)


def test_body_over_the_limit_is_413(client):
    big = b"\0" * (300 * 1024)
    r = client.post("/classify", files=files(big))
    assert r.status_code == 413 and "SKIPVIT_MAX_BODY_BYTES" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit is enforced on the streamed bytes
        for _ in range(30):
            yield b"\0" * (16 * 1024)

    r = client.post(
        "/classify", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert r.status_code == 413
    assert client.get("/livez").status_code == 200


def test_metrics_are_exported(client):
    client.post("/classify", files=files(png_bytes(bar_image(0))))
    client.post("/classify?point=nope", files=files(png_bytes(bar_image(0))))
    text = client.get("/metrics").text
    for name in (
        'skipvit_requests_total{route="/classify",status="200"}',
        "skipvit_request_duration_seconds_bucket",
        "skipvit_queue_wait_seconds_bucket",
        "skipvit_batch_size_bucket",
        "skipvit_queue_depth",
        "skipvit_layers_executed_bucket",
        'skipvit_layer_rows_total{layer="3"}',
        "skipvit_config_switches_total",
        'skipvit_active_point_info{method="static",point="static",weights="static"} 1.0',
        "skipvit_model_ready 1.0",
        'skipvit_images_total{point="static"}',
    ):
        assert name in text, name
    unknown = re.search(r'skipvit_rejections_total\{reason="unknown_point"\} (\S+)', text)
    assert unknown and float(unknown.group(1)) >= 1
    assert 'route="/nope"' not in text
    client.get("/nope")
    assert 'skipvit_requests_total{route="other",status="404"}' in client.get("/metrics").text


def test_the_web_page_is_served(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"] and "skipvit" in r.text


def test_gate_points_of_one_weight_set_are_served_per_row(gates):
    pareto = gates.get("/pareto").json()
    assert {p["id"] for p in pareto["points"]} == {"static", "rl", "rl-t0.8", "nsga-a"}
    assert [p["id"] for p in pareto["points"] if p["active"]] == [pareto["active"]]
    blobs = [png_bytes(bar_image(k)) for k in range(4)]
    body = gates.post("/classify?point=nsga-a", files=files(*blobs)).json()
    assert body["point"] == "nsga-a"
    assert all(r["path"][0] == "0" and r["path"][3] == "0" for r in body["results"])  # genes -1


def test_switching_is_reported_by_pareto_config_metrics_and_responses(gates):
    blob = png_bytes(bar_image(2))
    r = gates.put("/config", json={"point": "rl-t0.8"}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["point"] == "rl-t0.8"
    assert gates.get("/pareto").json()["active"] == "rl-t0.8"
    assert gates.post("/classify", files=files(blob)).json()["point"] == "rl-t0.8"
    assert gates.post("/classify?point=static", files=files(blob)).json()["point"] == "static"
    text = gates.get("/metrics").text
    assert "skipvit_config_switches_total 1.0" in text and 'point="rl-t0.8"' in text
    gates.put("/config", json={"point": "static"}, headers=ADMIN)


def test_the_dashboard_queries_only_what_the_app_exports(client):
    from tests.test_monitoring import EXPORTED_METRICS, dashboard_metric_names

    text = client.get("/metrics").text
    exported = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    counters = {line.split()[2] + "_total" for line in text.splitlines() if line.endswith(" counter")}
    infos = {line.split()[2] + "_info" for line in text.splitlines() if line.endswith(" info")}
    names = exported | counters | infos
    assert set(EXPORTED_METRICS) <= names, set(EXPORTED_METRICS) - names
    assert dashboard_metric_names() <= set(EXPORTED_METRICS)


def test_livez_answers_while_the_model_loads_and_readyz_waits(tiny_bundle, monkeypatch):
    gate = threading.Event()
    real = Engine.from_dir

    def slow_load(*args, **kwargs):
        gate.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(Engine, "from_dir", slow_load)
    settings = Settings(bundle=tiny_bundle, device="cpu", admin_token=TOKEN, engine="thread")
    with TestClient(create_app(settings)) as c:
        assert c.get("/livez").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["ready"] is False
        assert c.post("/classify", files=files(png_bytes(bar_image(0)))).status_code == 503
        gate.set()
        wait_ready(c)
        assert c.post("/classify", files=files(png_bytes(bar_image(0)))).status_code == 200


def test_a_bundle_that_fails_to_load_fails_livez_with_the_reason(tiny_bundle, tmp_path):
    broken = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, broken)
    for f in (broken / "weights").glob("*.safetensors"):
        f.write_bytes(b"not safetensors")
    with TestClient(create_app(Settings(bundle=broken, device="cpu", admin_token=TOKEN))) as c:
        for _ in range(200):
            if c.get("/livez").status_code == 503:
                break
            time.sleep(0.05)
        r = c.get("/livez")
        assert r.status_code == 503 and r.json()["error"]
        assert c.get("/readyz").status_code == 503
