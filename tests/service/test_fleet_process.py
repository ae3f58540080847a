"""A local fleet: three real `skipvit serve` processes on loopback, each naming all three as its
peers, under a steady load while `skipvit fleet set` switches them. Every request is answered 200;
every replica is on the new point when the command returns; one the broadcast missed catches up
within the sync bound; one killed and started again comes up on the fleet's point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import httpx2
import pytest

from tests.service.helpers import bar_image, png_bytes
from tests.service.server import REPO, TOKEN, ServerProcess, free_port

pytestmark = pytest.mark.slow
LAC = "lac-ex-0.5"  # the second point of tiny_fleet_bundle
SYNC_S, TIMEOUT_S = 1.0, 1.0  # SKIPVIT_FLEET_SYNC_S, SKIPVIT_FLEET_TIMEOUT_S
BOUND_S = SYNC_S + 2 * TIMEOUT_S  # docs/scaling.md: a missed replica catches up within this
SLACK_S = 1.0  # this test's own polling, and a busy machine
REQUESTS_PER_CLIENT = 200


def fleet_cli(*words: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "SKIPVIT_ADMIN_TOKEN": TOKEN, "SKIPVIT_FLEET_PEERS": ""}
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "skipvit", "fleet", *words, "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done, time.monotonic() - t0


class Load:
    """One client thread per replica, posting one small image at a time (no ``?point=``) until
    stopped or ``REQUESTS_PER_CLIENT`` are sent; every answer (or error) is kept."""

    def __init__(self, bases: list[str]) -> None:
        self.image = png_bytes(bar_image(1))
        self.stop = threading.Event()
        self.sent = 0
        self.answers: list[tuple[float, int, str | None]] = []  # (sent at, status, point)
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.client, args=(b,), daemon=True) for b in bases]

    def client(self, base: str) -> None:
        with httpx2.Client(base_url=base, timeout=30) as c:
            for _ in range(REQUESTS_PER_CLIENT):
                if self.stop.is_set():
                    return
                t = time.monotonic()
                with self.lock:
                    self.sent += 1
                try:
                    r = c.post("/classify", files=[("files", ("a.png", self.image, "image/png"))])
                    answer = (t, r.status_code, r.json().get("point") if r.status_code == 200 else r.text)
                except httpx2.HTTPError as e:
                    answer = (t, 0, repr(e))
                with self.lock:
                    self.answers.append(answer)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def fleet_of(reply: httpx2.Response) -> dict:
    assert reply.status_code == 200, reply.text
    return reply.json()


@pytest.mark.timeout(180)
def test_one_switch_for_a_local_fleet(tiny_fleet_bundle, tmp_path):
    ports: list[int] = []
    while len(ports) < 3:
        if (p := free_port()) not in ports:
            ports.append(p)
    peers = ",".join(f"127.0.0.1:{p}" for p in ports)
    env = {
        "SKIPVIT_FLEET_PEERS": peers,
        "SKIPVIT_FLEET_SYNC_S": str(SYNC_S),
        "SKIPVIT_FLEET_TIMEOUT_S": str(TIMEOUT_S),
        "SKIPVIT_ENGINE": "thread",
        "SKIPVIT_TORCH_THREADS": "1",
    }
    servers = [ServerProcess(tiny_fleet_bundle, tmp_path, port=p, **env) for p in ports]
    wrong_token = tmp_path / "wrong-token"
    wrong_token.write_text("not-the-admin-token\n")
    try:
        for s in servers:
            s.wait_ready()
        bases = [s.base for s in servers]
        assert {fleet_of(httpx2.get(f"{b}/config"))["point"] for b in bases} == {"static"}

        with Load(bases) as load:
            time.sleep(0.5)  # the load is on
            done, took = fleet_cli("set", "--point", LAC, "--peers", peers)
            switched = time.monotonic()
            assert done.returncode == 0, done.stdout + done.stderr
            rows = json.loads(done.stdout)["replicas"]
            assert [(r["point"], r["generation"], r["status"]) for r in rows] == [(LAC, 1, "ok")] * 3
            print(f"fleet set --point: every replica on it when the command returned, {took:.2f} s")

            # a broadcast that misses a replica (only two named): it catches up from its peers
            done, took = fleet_cli("set", "--max-batch-size", "16", "--peers", ",".join(peers.split(",")[:2]))
            returned = time.monotonic()
            assert done.returncode == 0, done.stdout + done.stderr
            missed = servers[2].base
            while (config := fleet_of(httpx2.get(f"{missed}/config")))["fleet"]["generation"] != 2:
                assert time.monotonic() - returned < BOUND_S + SLACK_S, config
                time.sleep(0.05)
            lag = time.monotonic() - returned
            assert config["point"] == LAC and config["max_batch_size"] == 16
            time.sleep(0.3)  # a little load after
        print(
            f"missed replica on generation 2 {lag:.2f} s after the command returned, {lag + took:.2f} s "
            f"after it started (bound: {BOUND_S:g} s after the state reached its peers)"
        )

        assert load.sent == len(load.answers) >= 100, (load.sent, len(load.answers))
        bad = [a for a in load.answers if a[1] != 200]
        assert not bad, bad[:5]
        after = [point for t, _, point in load.answers if t > switched]
        assert after and set(after) == {LAC}, set(after)
        print(f"load: {len(load.answers)} requests, every one answered 200")

        # kill one replica and start it again with the same settings: it comes up on the fleet's point
        servers[2].proc.kill()
        servers[2].proc.wait(10)
        servers[2].stop()
        servers[2] = ServerProcess(tiny_fleet_bundle, tmp_path, port=ports[2], **env)
        config = first_config(servers[2])  # GET /config answers from the moment it is ready
        assert config["point"] == LAC and config["max_batch_size"] == 16, config
        assert config["fleet"]["generation"] == 2
        metrics = httpx2.get(f"{servers[2].base}/metrics").text
        assert 'skipvit_fleet_adopted_total{via="start"} 1.0' in metrics
        assert httpx2.get(f"{servers[2].base}/readyz").status_code == 200

        # refusals stop at the first replica, with its reason, and change nothing
        done, _ = fleet_cli("set", "--point", "nope", "--peers", peers)
        assert done.returncode == 2 and "unknown point 'nope'" in done.stderr, done.stderr
        assert "nothing was changed" in done.stderr and "Hint:" in done.stderr
        done, _ = fleet_cli("set", "--point", "static", "--peers", peers, "--token-file", str(wrong_token))
        assert (
            done.returncode == 2
            and "refused the admin token (401), nothing was changed; Hint:" in done.stderr
        )

        done, _ = fleet_cli("status", "--peers", peers)
        assert done.returncode == 0, done.stdout + done.stderr
        status = json.loads(done.stdout)
        assert status["state"]["generation"] == 2
        assert [(r["point"], r["status"]) for r in status["replicas"]] == [(LAC, "ok")] * 3
    finally:
        for s in servers:
            s.stop()


def first_config(server: ServerProcess, timeout: float = 90) -> dict:
    """The first GET /config that ``server`` answers (503 until it is ready)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise AssertionError(f"the replica exited:\n{server.output()}")
        try:
            r = httpx2.get(f"{server.base}/config", timeout=1)
            if r.status_code == 200:
                return r.json()
        except httpx2.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"not ready after {timeout} s:\n{server.output()}")
