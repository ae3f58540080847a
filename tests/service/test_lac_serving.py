"""LAC points in the service: per-batch LAC runs one request per forward, so a request's answer never
depends on the requests that arrive with it; per-example LAC points batch freely (even across alphas)."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from skipvit.model.bundle import Point, load_bundle
from skipvit.service.app import create_app
from skipvit.service.batcher import Knobs, Pending, plan
from skipvit.service.engine import BundleView, Engine
from skipvit.service.settings import Settings
from skipvit.service.state import service_state
from tests.service.helpers import bar_image, png_bytes, wait_ready

LAC_POINTS = {
    "lac-batch-0.3": {"alpha": 0.3, "mode": "per-batch"},
    "lac-ex-0.5": {"alpha": 0.5, "mode": "per-example"},
    "lac-ex-0.8": {"alpha": 0.8, "mode": "per-example"},
}


@pytest.fixture(scope="module")
def lac_bundle(tiny_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "tiny-lac"
    shutil.copytree(tiny_bundle, out)
    bundle = load_bundle(out)
    metrics = dict(bundle.point("static").metrics)
    bundle.upsert_points([Point(pid, "lac", "static", params, metrics) for pid, params in LAC_POINTS.items()])
    bundle.save()
    return out


def images() -> dict[str, np.ndarray]:
    """Request A: one image; request B: four more. On the tiny bundle, A alone runs all 4 layers under
    per-batch LAC at alpha 0.3, but in one batch with B's images the batch halts after 2."""
    rng = np.random.default_rng(0)
    b = [bar_image(k) for k in (0, 2, 3)] + [rng.integers(0, 256, (16, 16), dtype=np.uint8)]
    return {"A": np.stack([bar_image(1)]), "B": np.stack(b)}


def as_tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr)[:, None]  # (n, 1, H, W) uint8


def test_batch_keys_and_plan(lac_bundle):
    view = BundleView(lac_bundle)
    assert view.batch_key("lac-batch-0.3") is None
    assert view.batch_key("lac-ex-0.5") == view.batch_key("lac-ex-0.8") != view.batch_key("static")
    knobs = Knobs(max_batch_size=64, max_wait_ms=50, max_queue=100)
    q = [
        Pending(torch.zeros(n, 1, 16, 16, dtype=torch.uint8), p, 0.0, 100.0)
        for n, p in ((1, "lac-batch-0.3"), (4, "lac-batch-0.3"), (1, "lac-ex-0.5"), (2, "lac-ex-0.8"))
    ]
    # a per-batch request runs alone and at once (no company may join it, so it does not wait) ...
    assert plan(q, 0.0, knobs, "static", view.batch_key).batch == q[:1]
    assert plan(q[1:], 0.0, knobs, "static", view.batch_key).batch == q[1:2]
    # ... while per-example points of any alpha wait for company and share one forward
    assert plan(q[2:], 0.0, knobs, "static", view.batch_key).batch == []
    assert plan(q[2:], 0.05, knobs, "static", view.batch_key).batch == q[2:]


def test_per_batch_answers_would_depend_on_company_if_batched(lac_bundle):
    """The hazard the server avoids: the same image halts elsewhere in another batch."""
    engine = Engine(load_bundle(lac_bundle), torch.device("cpu"))
    imgs = images()
    alone = engine.predict(as_tensor(imgs["A"]), "lac-batch-0.3")[0]
    together = engine.predict(as_tensor(np.concatenate([imgs["A"], imgs["B"]])), "lac-batch-0.3")[0]
    assert alone.layers_executed == 4 and together.layers_executed == 2
    # per example, company changes nothing
    ex_alone = engine.predict(as_tensor(imgs["A"]), "lac-ex-0.5")[0]
    ex_together = engine.predict(as_tensor(np.concatenate([imgs["A"], imgs["B"]])), "lac-ex-0.5")[0]
    assert ex_alone.path == ex_together.path and ex_alone.index == ex_together.index


@pytest.fixture(scope="module")
def served(lac_bundle):
    app = create_app(Settings(bundle=lac_bundle, device="cpu", engine="thread", max_wait_ms=300))
    with TestClient(app) as c:
        wait_ready(c)
        calls: list[tuple[int, tuple[str, ...]]] = []  # (images, points) of every forward
        engine = service_state(app).engine
        real = engine.predict

        def recording(imgs, points=None):
            calls.append((int(imgs.shape[0]), tuple(points) if not isinstance(points, str) else (points,)))
            return real(imgs, points)

        engine.predict = recording
        yield c, calls


def post(client, arr: np.ndarray, point: str) -> dict:
    files = [("files", (f"{i}.png", png_bytes(a), "image/png")) for i, a in enumerate(arr)]
    r = client.post(f"/classify?point={point}", files=files)
    assert r.status_code == 200, r.text
    return r.json()


def post_together(client, jobs: list[tuple[np.ndarray, str]]) -> list[dict]:
    out: list[dict | None] = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def go(i, arr, point):
        start.wait()
        out[i] = post(client, arr, point)

    threads = [threading.Thread(target=go, args=(i, *job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def test_per_batch_answer_never_depends_on_other_requests(served):
    client, calls = served
    imgs = images()
    solo = {name: post(client, arr, "lac-batch-0.3")["results"] for name, arr in imgs.items()}
    assert solo["A"][0]["layers_executed"] == 4  # as alone in the engine test above
    calls.clear()
    for _ in range(2):
        together = post_together(client, [(imgs["A"], "lac-batch-0.3"), (imgs["B"], "lac-batch-0.3")])
        assert together[0]["results"] == solo["A"] and together[1]["results"] == solo["B"]
    assert sorted(n for n, _ in calls) == [1, 1, 4, 4]  # one forward per request, never a shared one


def test_per_example_points_share_forwards_and_answer_as_alone(served):
    client, calls = served
    imgs = images()
    solo = [
        post(client, imgs["A"], "lac-ex-0.5")["results"],
        post(client, imgs["B"], "lac-ex-0.8")["results"],
    ]
    calls.clear()
    together = post_together(client, [(imgs["A"], "lac-ex-0.5"), (imgs["B"], "lac-ex-0.8")])
    assert [t["point"] for t in together] == ["lac-ex-0.5", "lac-ex-0.8"]
    for got, want in zip(together, solo, strict=True):
        for g, w in zip(got["results"], want, strict=True):
            assert g["path"] == w["path"] and g["index"] == w["index"]
            assert g["probability"] == pytest.approx(w["probability"], abs=1e-5)
    assert len(calls) == 1 and calls[0][0] == 5  # one forward for both requests ...
    assert sorted(calls[0][1]) == ["lac-ex-0.5"] + ["lac-ex-0.8"] * 4  # ... with one alpha per row


def test_pareto_says_how_lac_points_are_served(served):
    client, _ = served
    points = {p["id"]: p for p in client.get("/pareto").json()["points"]}
    assert points["lac-batch-0.3"]["serving"].startswith("one request per forward")
    assert "per-batch" in points["lac-batch-0.3"]["description"]
    assert points["lac-ex-0.5"]["serving"].startswith("batched per image")


def test_an_engine_of_several_processes_never_cuts_a_per_batch_forward(lac_bundle):
    """Two engine processes cut a batch in two, except where the rows' answers depend on each
    other: a per-batch LAC batch runs whole in one of them, as in one process."""
    from skipvit.service.worker import EngineProcess

    imgs = as_tensor(np.concatenate([images()["A"], images()["B"][:1]]))  # cut in two, A would run alone
    local = Engine(load_bundle(lac_bundle), torch.device("cpu"))
    remote = EngineProcess(lac_bundle, device="cpu", threads=1, workers=2)
    try:
        whole = remote.predict(imgs, "lac-batch-0.3")
        assert [r.path for r in whole] == [r.path for r in local.predict(imgs, "lac-batch-0.3")]
        assert whole[0].layers_executed == 2  # halted with its company; alone it runs all 4
        assert [c.sent for c in remote._children] == [1, 0]
        ex = ["lac-ex-0.5", "lac-ex-0.8"]  # rows that do not depend on each other: cut in two
        assert [r.path for r in remote.predict(imgs, ex)] == [r.path for r in local.predict(imgs, ex)]
        assert [c.sent for c in remote._children] == [2, 1]
    finally:
        remote.close()
