"""DyCE points in the service: served per request (`?point=`) and as the active point (PUT /config),
with answers and paths equal to running the point's policy in-process."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

from skipvit.model.bundle import load_bundle
from skipvit.model.points import batch_key, policy_for
from skipvit.service.app import create_app
from skipvit.service.settings import Settings
from tests.service.helpers import bar_image, files, png_bytes, wait_ready

TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def dyce(tiny_dyce_bundle):
    app = create_app(Settings(bundle=tiny_dyce_bundle, device="cpu", admin_token=TOKEN))
    with TestClient(app) as c:
        yield wait_ready(c)


def _images():
    return [bar_image(k) for k in range(4)] + [bar_image(k, classes=3) for k in range(3)]


def _expected(bundle_dir, point_id):
    """Index and layers run of each image, running the point's policy on it alone, in-process."""
    bundle = load_bundle(bundle_dir)
    point = bundle.point(point_id)
    model = bundle.build_model(point.weights)
    mean, std = bundle.dataset["mean"][0], bundle.dataset["std"][0]
    out = []
    with torch.inference_mode():
        for img in _images():
            x = (torch.from_numpy(img).float()[None, None] / 255.0 - mean) / std  # (1, 1, H, W)
            res = model(x, policy_for(point, model))
            out.append((int(res.logits.argmax(-1)), int(res.layers_executed[0])))
    return out


def test_dyce_points_are_listed_and_batched_per_point(dyce, tiny_dyce_bundle):
    points = dyce.get("/pareto").json()["points"]
    ours = [p for p in points if p["method"] == "dyce"]
    assert ours and all("DyCE" in p["description"] for p in ours)
    bundle = load_bundle(tiny_dyce_bundle)
    keys = {batch_key(bundle.point(p["id"])) for p in ours}
    assert len(keys) == len(ours)  # one forward per point: its exits apply to the whole batch


def test_a_dyce_point_per_request_answers_as_the_model_does(dyce, tiny_dyce_bundle):
    ids = [p.id for p in load_bundle(tiny_dyce_bundle).front if p.method == "dyce"]
    blobs = [png_bytes(img) for img in _images()]
    for pid in (ids[0], ids[-1]):
        body = dyce.post(f"/classify?point={pid}", files=files(*blobs)).json()
        assert body["point"] == pid
        got = [(r["index"], r["layers_executed"]) for r in body["results"]]
        assert got == _expected(tiny_dyce_bundle, pid)
        for r in body["results"]:  # a row runs a prefix of the layers, then leaves
            k = r["layers_executed"]
            assert r["path"] == "1" * k + "0" * (4 - k)
    # The cheapest point lets some of these images leave early.
    first = dyce.post(f"/classify?point={ids[0]}", files=files(*blobs)).json()["results"]
    assert min(r["layers_executed"] for r in first) < 4


def test_switching_to_a_dyce_point_and_back(dyce, tiny_dyce_bundle):
    pid = next(p.id for p in load_bundle(tiny_dyce_bundle).front if p.method == "dyce")
    blob = png_bytes(bar_image(1))
    r = dyce.put("/config", json={"point": pid}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["point"] == pid
    assert dyce.get("/pareto").json()["active"] == pid
    assert dyce.post("/classify", files=files(blob)).json()["point"] == pid
    # Another point per request while a DyCE point is active.
    body = dyce.post("/classify?point=static", files=files(blob)).json()
    assert body["point"] == "static" and body["results"][0]["path"] == "1111"
    r = dyce.put("/config", json={"point": "static"}, headers=ADMIN)
    assert r.status_code == 200
    body = dyce.post("/classify", files=files(blob)).json()
    assert body["point"] == "static" and body["results"][0]["layers_executed"] == 4
