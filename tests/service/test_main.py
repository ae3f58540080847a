"""``DrainingServer`` (``skipvit serve``) in this process: a drain that runs out of time."""

from __future__ import annotations

import signal
import threading
import time

import httpx2
import pytest
import uvicorn

from service.app import create_app
from service.engine import Engine
from service.main import DrainingServer
from service.settings import Settings
from tests.service.helpers import bar_image, files, png_bytes
from tests.service.server import free_port


@pytest.mark.parametrize("engine_returns", [True, False], ids=["engine-returns", "engine-stuck"])
def test_a_drain_that_times_out_still_answers_every_admitted_request(
    tiny_bundle, monkeypatch, engine_returns
):
    """One request computes (the engine blocks), two wait in the queue, SIGTERM comes and the
    drain times out: the queued ones hear 503 at once; the computing one gets its answer if the
    engine returns within uvicorn's graceful-shutdown time, else a 503, never a bare 500."""
    port = free_port()
    settings = Settings(bundle=tiny_bundle, device="cpu", engine="thread", port=port, admin_token="t",
                        max_batch_size=1, pipeline_depth=1, drain_timeout_s=0.5, drain_quiet_s=0.1)  # fmt: skip
    app = create_app(settings)
    server = DrainingServer(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=1), app.state.drain)  # fmt: skip
    serving = threading.Thread(target=server.run, daemon=True)
    serving.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx2.get(f"{base}/readyz", timeout=1).status_code == 200:
                break
        except httpx2.TransportError:
            pass
        time.sleep(0.05)
    release = threading.Event()
    real = Engine.predict

    def blocked(self, images, points=None):
        release.wait(10)
        return real(self, images, points)

    monkeypatch.setattr(Engine, "predict", blocked)
    answers: list[tuple[int, str]] = []

    def client(k: int) -> None:
        r = httpx2.post(f"{base}/classify", files=files(png_bytes(bar_image(k))), timeout=30)
        answers.append((r.status_code, r.json()["detail"] if r.status_code != 200 else ""))

    clients = [threading.Thread(target=client, args=(k,)) for k in range(3)]
    for t in clients:
        t.start()
        time.sleep(0.1)
    server.handle_exit(signal.SIGTERM, None)
    if engine_returns:
        time.sleep(0.8)  # past the drain's 0.5 s, within uvicorn's 1 s
        release.set()
    for t in clients:
        t.join(10)
    release.set()
    serving.join(10)
    assert not serving.is_alive()
    statuses = sorted(s for s, _ in answers)
    assert len(answers) == 3 and statuses == ([200, 503, 503] if engine_returns else [503, 503, 503]), answers
    details = [d for s, d in answers if s == 503]
    assert sum("shutting down" in d for d in details) == 2  # the two that waited in the queue
    if not engine_returns:
        assert any("shut down before this request was answered" in d for d in details)
