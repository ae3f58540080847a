"""Load against a real uvicorn process on loopback, serving the shipped bundle to real test images.

Every request is answered exactly once with the right number of results; 20 PUT /config
switches during load fail nothing, and each response's point was active at some moment of its
lifetime; a full queue answers 503 with Retry-After; malformed uploads never give 5xx; SIGTERM
in the middle of load loses nothing in flight.
"""

from __future__ import annotations

import asyncio
import io
import random
import signal
import time
from dataclasses import dataclass

import httpx2
import pytest
from PIL import Image

from skipvit.training.data.fashion_mnist import load as load_fmnist
from tests.conftest import FMNIST_DIR, SHIPPED_BUNDLE
from tests.service.helpers import png_bytes
from tests.service.server import TOKEN, ServerProcess

pytestmark = pytest.mark.slow
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def switch_points() -> list[str]:
    """Five points of the shipped bundle to switch between, of as many methods as it has: the first
    point of each method in front order, then the last one of each, static among them."""
    from skipvit.model.bundle import load_bundle

    front = load_bundle(SHIPPED_BUNDLE).front
    firsts = list({p.method: p.id for p in reversed(front)}.values())[::-1]
    lasts = [i for i in {p.method: p.id for p in front}.values() if i not in firsts]
    return (firsts + lasts)[:5]


@pytest.fixture(scope="module")
def pngs() -> list[bytes]:
    assert FMNIST_DIR.is_dir(), "Fashion-MNIST is needed: apt-get install dataset-fashion-mnist"
    _, _, test = load_fmnist(FMNIST_DIR)
    return [png_bytes(img) for img in test.images[:256, 0].numpy()]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(SHIPPED_BUNDLE, tmp_path_factory.mktemp("load")).wait_ready()
    yield srv
    srv.stop()


def upload(blobs: list[bytes]) -> list:
    return [("files", (f"{i}.png", b, "image/png")) for i, b in enumerate(blobs)]


@dataclass
class Outcome:
    sent: float
    done: float
    n: int
    asked: str | None
    status: int | None = None  # None: no HTTP answer (see error)
    point: str | None = None
    results: int = 0
    error: str = ""


async def one(client: httpx2.AsyncClient, blobs: list[bytes], point: str | None) -> Outcome:
    sent = time.monotonic()
    try:
        r = await client.post("/classify", files=upload(blobs), params={"point": point} if point else None)
    except httpx2.TransportError as e:
        return Outcome(sent, time.monotonic(), len(blobs), point, error=type(e).__name__)
    out = Outcome(sent, time.monotonic(), len(blobs), point, r.status_code)
    if r.status_code == 200:
        body = r.json()
        out.point, out.results = body["point"], len(body["results"])
    return out


def test_32_clients_x_50_requests_with_20_switches(server, pngs):
    rng = random.Random(0)

    async def client_task(client, k: int) -> list[Outcome]:
        outs = []
        for i in range(50):
            n = 1 + (k + i) % 3  # 1 to 3 images per request
            start = rng.randrange(len(pngs) - n)
            asked = "static" if (k + i) % 10 == 0 else None  # some pin a point, most follow the active one
            outs.append(await one(client, pngs[start : start + n], asked))
        return outs

    points = switch_points()
    assert "static" in points and len(set(points)) == len(points) >= 3

    async def switcher(client) -> list[tuple[float, float, str]]:
        switches = []
        for i in range(20):
            await asyncio.sleep(0.08)  # about time: the switches are spread over the load
            point = points[i % len(points)]
            sent = time.monotonic()
            r = await client.put("/config", json={"point": point}, headers=ADMIN)
            assert r.status_code == 200 and r.json()["point"] == point, r.text
            switches.append((sent, time.monotonic(), point))
        return switches

    async def main():
        limits = httpx2.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx2.AsyncClient(base_url=server.base, timeout=60, limits=limits) as client:
            start = time.monotonic()
            initial = (await client.get("/config")).json()["point"]
            tasks = [client_task(client, k) for k in range(32)]
            *per_client, switches = await asyncio.gather(*tasks, switcher(client))
            return start, initial, [o for outs in per_client for o in outs], switches

    start, initial, outcomes, switches = asyncio.run(main())
    assert len(outcomes) == 32 * 50
    bad = [o for o in outcomes if o.status != 200]
    assert not bad, f"{len(bad)} failed requests, e.g. {bad[:3]}"
    assert all(o.results == o.n for o in outcomes), "a response with the wrong number of results"
    # The point active over time: switch k's point took over somewhere in [sent_k, done_k].
    windows = [(start, switches[0][1], initial)]
    for k, (sent, _, point) in enumerate(switches):
        until = switches[k + 1][1] if k + 1 < len(switches) else float("inf")
        windows.append((sent, until, point))
    for o in outcomes:
        if o.asked:
            assert o.point == o.asked
            continue
        assert any(p == o.point and lo <= o.done and o.sent <= hi for lo, hi, p in windows), (
            f"response served by {o.point}, not active during [{o.sent - start:.3f}, {o.done - start:.3f}]"
        )
    served = {o.point for o in outcomes}
    assert len(served) >= 3, f"the switches did not show in the responses: {served}"


def test_a_full_queue_answers_503_with_retry_after(server, pngs):
    with httpx2.Client(base_url=server.base, timeout=30) as c:
        old = c.get("/config").json()
        r = c.put("/config", json={"max_queue": 2, "max_batch_size": 1, "max_wait_ms": 0}, headers=ADMIN)
        assert r.status_code == 200

    async def flood():
        async with httpx2.AsyncClient(base_url=server.base, timeout=60) as client:
            return await asyncio.gather(*(one(client, pngs[i : i + 2], None) for i in range(64)))

    try:
        outcomes = asyncio.run(flood())
    finally:
        with httpx2.Client(base_url=server.base, timeout=30) as c:
            knobs = {k: old[k] for k in ("max_queue", "max_batch_size", "max_wait_ms")}
            assert c.put("/config", json=knobs, headers=ADMIN).status_code == 200
    statuses = [o.status for o in outcomes]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(503) > 0 and statuses.count(200) > 0
    with httpx2.Client(base_url=server.base, timeout=30) as c:
        r = c.post("/classify", files=upload(pngs[:2]))
        assert r.status_code == 200
        text = c.get("/metrics").text
    assert 'skipvit_rejections_total{reason="queue_full"}' in text
    # and the header, on a fresh flood of one more request than the queue takes
    with httpx2.Client(base_url=server.base, timeout=30) as c:
        c.put("/config", json={"max_queue": 1}, headers=ADMIN)
        r = c.post("/classify", files=upload(pngs[:2]))
        c.put("/config", json={"max_queue": old["max_queue"]}, headers=ADMIN)
    assert r.status_code == 413 and "queue holds" in r.json()["detail"]


def malformed_payloads(pngs: list[bytes]) -> list[dict]:
    good = pngs[0]
    rng = random.Random(1)
    bomb = io.BytesIO()
    Image.new("L", (20000, 20000)).save(bomb, format="PNG")  # 400 M pixels, a few hundred KB
    out = [
        {"files": upload([b""])},
        {"files": upload([b"GIF89a" + b"\0" * 64])},
        {"files": upload([good[: len(good) // 2]])},
        {"files": upload([bomb.getvalue()])},
        {"files": [("files", ("x.txt", b"hello", "text/plain"))]},
        {"files": [("wrong", ("a.png", good, "image/png"))]},
        {
            "content": b"--x\r\nnot really multipart",
            "headers": {"content-type": "multipart/form-data; boundary=x"},
        },
        {"content": b"--x\r\n", "headers": {"content-type": "multipart/form-data"}},
        {"content": b"{}", "headers": {"content-type": "application/json"}},
        {"content": b"\xff" * 100, "headers": {"content-type": "image/png"}},
        {"files": upload([good]), "params": {"point": "../../etc/passwd"}},
        {"files": upload([good]), "params": {"point": ""}},
    ]
    for _ in range(40):  # random byte flips of a real PNG
        b = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        out.append({"files": upload([bytes(b)])})
    return out


def test_malformed_uploads_never_give_5xx(server, pngs):
    with httpx2.Client(base_url=server.base, timeout=30) as c:
        for payload in malformed_payloads(pngs):
            r = c.post("/classify", **payload)
            assert r.status_code < 500, (payload.get("params"), r.status_code, r.text)
            if r.status_code != 200:
                assert r.json()["detail"], r.text
        assert c.get("/livez").status_code == 200
        assert c.post("/classify", files=upload(pngs[:1])).status_code == 200


def test_sigterm_mid_load_loses_nothing_in_flight(server, pngs):
    """Runs last in this module: it stops the server."""
    stopped: dict[str, float] = {}

    async def client_task(client) -> list[Outcome]:
        outs = []
        while True:
            o = await one(client, pngs[:2], None)
            outs.append(o)
            if o.status != 200:  # drained (503) or gone: a real client goes elsewhere now
                return outs
            if time.monotonic() - stopped.get("t", 1e18) > 30:
                return outs

    async def killer():
        await asyncio.sleep(1.0)  # about time: SIGTERM comes in the middle of the load
        stopped["t"] = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)

    async def main():
        limits = httpx2.Limits(max_connections=32, max_keepalive_connections=32)
        async with httpx2.AsyncClient(base_url=server.base, timeout=60, limits=limits) as client:
            results = await asyncio.gather(*(client_task(client) for _ in range(16)), killer())
            return [o for outs in results[:-1] for o in outs]

    outcomes = asyncio.run(main())
    assert server.proc.wait(30) == 0, server.output()
    t = stopped["t"]
    before = [o for o in outcomes if o.done < t]
    in_flight = [o for o in outcomes if o.sent < t <= o.done]
    after = [o for o in outcomes if o.sent >= t]
    assert before and all(o.status == 200 for o in before)
    # Sent before the signal, answered after it: each got its one HTTP answer, 200 or a clean 503.
    assert in_flight, "no request was in flight at SIGTERM"
    assert all(o.status in (200, 503) for o in in_flight), [
        o for o in in_flight if o.status not in (200, 503)
    ]
    assert any(o.status == 200 for o in in_flight), "the requests in flight were not finished"
    assert all(o.status == 200 and o.results == o.n for o in in_flight if o.status != 503)
    # Sent after: answered 503 while draining, or refused once the socket closed; never cut off.
    assert all(o.status in (200, 503) or o.error == "ConnectError" for o in after), after
    assert "drained: every admitted request answered" in server.output()
