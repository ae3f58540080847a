"""``DrainingServer`` (``skipvit serve``) in this process: a drain that runs out of time."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
import time

import httpx2
import pytest
import uvicorn

from skipvit.service.app import create_app
from skipvit.service.engine import Engine
from skipvit.service.lifecycle import drain, hurry
from skipvit.service.main import DrainingServer
from skipvit.service.settings import Settings
from skipvit.service.state import service_state
from tests.service.helpers import bar_image, files, png_bytes
from tests.service.server import REPO, free_port, poll_ready


@pytest.mark.parametrize("engine_returns", [True, False], ids=["engine-returns", "engine-stuck"])
def test_a_drain_that_times_out_still_answers_every_admitted_request(
    tiny_bundle, monkeypatch, engine_returns
):
    """One request computes (the engine blocks), two wait in the queue, SIGTERM comes. If the engine
    returns within the drain's bound, all three are answered 200 (what was admitted is finished);
    if it never does, all three hear 503 when the bound is up, never a bare 500."""
    port = free_port()
    settings = Settings(
        bundle=tiny_bundle,
        device="cpu",
        engine="thread",
        port=port,
        admin_token="test-admin-token",
        max_batch_size=1,
        pipeline_depth=1,
        drain_timeout_s=0.5,
    )
    app = create_app(settings)
    state = service_state(app)
    server = DrainingServer(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1),
        functools.partial(drain, state),
        functools.partial(hurry, state),
    )
    serving = threading.Thread(target=server.run, daemon=True)
    serving.start()
    base = f"http://127.0.0.1:{port}"
    assert poll_ready(base)
    entered, release, two_queued = threading.Event(), threading.Event(), threading.Event()
    real = Engine.predict

    def blocked(self, images, points=None):
        entered.set()
        release.wait(10)
        return real(self, images, points)

    monkeypatch.setattr(Engine, "predict", blocked)
    report_queue = state.metrics.queued

    def queued(images: int) -> None:  # the batcher reports each change of its queue here
        report_queue(images)
        if images == 2:
            two_queued.set()

    monkeypatch.setattr(state.metrics, "queued", queued)
    answers: list[tuple[int, str]] = []

    def client(k: int) -> None:
        r = httpx2.post(f"{base}/classify", files=files(png_bytes(bar_image(k))), timeout=30)
        answers.append((r.status_code, r.json()["detail"] if r.status_code != 200 else ""))

    clients = [threading.Thread(target=client, args=(k,)) for k in range(3)]
    clients[0].start()
    assert entered.wait(10)  # the first request computes ...
    for t in clients[1:]:
        t.start()
    assert two_queued.wait(10)  # ... and the other two wait in the queue
    server.handle_exit(signal.SIGTERM, None)
    if engine_returns:
        time.sleep(0.3)  # about time: within uvicorn's graceful 1 s
        release.set()
    for t in clients:
        t.join(10)
    release.set()
    serving.join(10)
    assert not serving.is_alive()
    statuses = sorted(s for s, _ in answers)
    assert len(answers) == 3 and statuses == ([200] * 3 if engine_returns else [503] * 3), answers
    if not engine_returns:
        assert all("shut down before this request was answered" in d for _, d in answers), answers


def wait_for_line(log, text: str, timeout: float = 30.0) -> None:
    """Poll the server's log until a line with ``text`` appears."""
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{log.read_text(errors='replace')}"
        time.sleep(0.05)


HUNG_THREAD_ENGINE = """
import threading, sys
from skipvit.service.engine import Engine
real = Engine.predict
def predict(self, images, points=None):
    if images.shape[0] == 2:  # the test's request: hangs for good
        print("test: the batch is in the engine", flush=True)
        threading.Event().wait()
    return real(self, images, points)
Engine.predict = predict
from skipvit.service.main import serve
serve()
"""


def test_serve_exits_when_a_thread_engine_never_returns(tiny_bundle, tmp_path):
    """`skipvit serve` with SKIPVIT_ENGINE=thread and a batch that never comes back: SIGTERM still
    ends the process within its bounds (drain, uvicorn's grace, then as long again for the engine),
    exit code 1, and the request in the hung batch hears 503."""
    port = free_port()
    env = {
        **os.environ,
        "SKIPVIT_BUNDLE": str(tiny_bundle),
        "SKIPVIT_PORT": str(port),
        "SKIPVIT_DEVICE": "cpu",
        "SKIPVIT_ENGINE": "thread",
        "SKIPVIT_ADMIN_TOKEN": "test-admin-token",
        "SKIPVIT_DRAIN_TIMEOUT_S": "0.5",
        "SKIPVIT_REQUEST_TIMEOUT_S": "30",
        "SKIPVIT_LOG_LEVEL": "info",
    }
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", HUNG_THREAD_ENGINE],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:

        def alive() -> None:
            assert proc.poll() is None, log.read_text()

        assert poll_ready(base, check=alive)
        answers = []
        asking = threading.Thread(
            target=lambda: answers.append(
                httpx2.post(
                    f"{base}/classify",
                    files=files(png_bytes(bar_image(0)), png_bytes(bar_image(1))),
                    timeout=30,
                )
            )
        )
        asking.start()
        wait_for_line(log, "test: the batch is in the engine")  # which never returns it
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
        took = time.monotonic() - t0
        asking.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = log.read_text()
    assert code == 1, text
    assert took < 10, text  # 0.5 s drain + 1 s of uvicorn's grace + 0.5 s for the engine, and the start
    assert "exiting with the engine still running a batch" in text
    assert "Exception in ASGI application" not in text  # the cancelled request was answered, not an error
    assert len(answers) == 1 and answers[0].status_code == 503, answers
