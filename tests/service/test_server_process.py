"""A real `skipvit serve` process on loopback, serving the shipped bundle to real test images."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx2
import numpy as np
import pytest

from skipvit.training.data.fashion_mnist import load as load_fmnist
from tests.conftest import FMNIST_DIR, SHIPPED_BUNDLE
from tests.service.helpers import png_bytes
from tests.service.server import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    assert (SHIPPED_BUNDLE / "bundle.json").is_file(), f"the shipped bundle is missing at {SHIPPED_BUNDLE}"
    srv = ServerProcess(SHIPPED_BUNDLE, tmp_path_factory.mktemp("server")).wait_ready()
    yield srv.base, srv.proc
    srv.stop()


def test_real_images_through_a_real_server(server):
    base, _ = server
    assert FMNIST_DIR.is_dir(), "Fashion-MNIST is needed: apt-get install dataset-fashion-mnist"
    _, _, test = load_fmnist(FMNIST_DIR)
    n = 2000  # the first 2,000 test images, 16 per request
    images = test.images[:n, 0].numpy()  # (N, 28, 28)
    labels = test.labels[:n].tolist()
    predicted: list[int] = []
    with httpx2.Client(base_url=base, timeout=60) as client:
        for start in range(0, n, 16):  # multi-image requests, answered in input order
            chunk = [png_bytes(img) for img in images[start : start + 16]]
            files = [("files", (f"{start + i}.png", b, "image/png")) for i, b in enumerate(chunk)]
            r = client.post("/classify", files=files)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["point"] == "static" and len(body["results"]) == len(chunk)
            predicted += [res["index"] for res in body["results"]]
            assert all(res["layers_executed"] == 9 and res["path"] == "1" * 9 for res in body["results"])
    accuracy = float(np.mean(np.array(predicted) == np.array(labels)))
    assert accuracy >= 0.89, f"accuracy {accuracy:.3f} over {n} real test images"


def test_bad_uploads_to_a_real_server(server):
    base, _ = server
    with httpx2.Client(base_url=base, timeout=30) as client:
        r = client.post("/classify", files=[("files", ("x.txt", b"plain text", "text/plain"))])
        assert r.status_code == 422 and "PNG, JPEG or WebP" in r.json()["detail"]
        r = client.post("/classify", content=b"{}", headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500
        assert client.get("/livez").status_code == 200


def engine_processes(pid: int) -> list[int]:
    """The engine processes among ``pid``'s children (multiprocessing's spawned children)."""
    children = [c for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
    return [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="Linux scheduling policies and /proc")
def test_the_event_loop_does_not_preempt_the_engine(server):
    """The event loop's thread (the process's main thread) runs in SCHED_BATCH; the engine
    processes it starts go back to SCHED_OTHER (``service.sched``)."""
    _, proc = server
    assert os.sched_getscheduler(proc.pid) == os.SCHED_BATCH
    engines = engine_processes(proc.pid)
    assert engines, "no engine process found"
    assert all(os.sched_getscheduler(p) == os.SCHED_OTHER for p in engines)


def test_sigterm_exits_cleanly(server):
    _, proc = server
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
