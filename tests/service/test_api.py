"""The real app (lifespan and all) under FastAPI's TestClient, on the tiny bundle."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.service.helpers import bar_image, png_bytes


@pytest.fixture(scope="module")
def client(tiny_bundle):
    app = create_app(Settings(bundle=tiny_bundle, device="cpu", max_files=4, max_image_bytes=64 * 1024))
    with TestClient(app) as c:
        yield c


def files(*blobs):
    return [("files", (f"img{i}.png", b, "image/png")) for i, b in enumerate(blobs)]


def test_health(client):
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").json() == {"ready": True}


def test_classify_shape_and_order(client):
    blobs = [png_bytes(bar_image(k)) for k in (0, 1, 2, 3)]
    r = client.post("/classify", files=files(*blobs))
    assert r.status_code == 200, r.text
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
    assert client.get("/config").json() == {"point": "static"}


def test_openapi_lists_the_routes(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/classify", "/pareto", "/config", "/livez", "/readyz"} <= set(paths)


def test_rl_point_is_served_with_its_paths(tiny_rl_bundle):
    app = create_app(Settings(bundle=tiny_rl_bundle, device="cpu"))
    blobs = [png_bytes(bar_image(k)) for k in range(4)]
    with TestClient(app) as c:
        assert {p["id"] for p in c.get("/pareto").json()["points"]} == {"static", "rl"}
        body = c.post("/classify?point=rl", files=files(*blobs)).json()
        assert body["point"] == "rl"
        for res in body["results"]:
            assert len(res["path"]) == 4 and res["layers_executed"] == res["path"].count("1")
        assert all(
            r["path"] == "1111"
            for r in c.post("/classify?point=static", files=files(*blobs)).json()["results"]
        )
