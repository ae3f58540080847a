"""A fleet state in the real app: PUT /fleet (admin token; applied as PUT /config applies; the same
one again is nothing; an older one 409), shown in GET /config and /metrics; and a replica taking
the newest state from its peers, at start and after (the peers' answers stubbed)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from skipvit.service import fleetsync
from skipvit.service.app import create_app
from skipvit.service.fleet import FleetState
from skipvit.service.peers import Reply
from skipvit.service.settings import Settings
from skipvit.service.state import service_state
from tests.service.helpers import bar_image, files, png_bytes, wait_ready

TOKEN = "fleet-admin-token-0123"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
LAC = "lac-ex-0.5"  # the second point of tiny_fleet_bundle


def settings(bundle, **kw) -> Settings:
    return Settings(bundle=bundle, device="cpu", engine="thread", admin_token=TOKEN, **kw)


@pytest.fixture(scope="module")
def client(tiny_fleet_bundle):
    with TestClient(create_app(settings(tiny_fleet_bundle))) as c:
        yield wait_ready(c)


def fleet_body(generation: int, set_at: float = 0.0, **config) -> dict:
    return {"generation": generation, "set_at": set_at, "set_by": "test", "config": config}


def metric(client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def test_a_fleet_state_needs_the_admin_token_before_its_body_is_read(client):
    r = client.put("/fleet", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = client.put("/fleet", json=fleet_body(1, point=LAC), headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and "Hint:" in r.json()["detail"]
    assert client.get("/config").json()["fleet"] is None  # nothing applied


def test_apply_the_same_again_and_refuse_an_older_one(client):
    assert client.get("/config").json()["fleet"] is None  # additive: null until a fleet state arrives
    switches = metric(client, "skipvit_config_switches_total")
    body = fleet_body(2, 100.0, point=LAC, max_batch_size=16, autopilot=None)
    r = client.put("/fleet", json=body, headers=ADMIN)
    assert r.status_code == 200, r.text
    config = r.json()
    assert config["point"] == LAC and config["max_batch_size"] == 16
    assert config["fleet"] == {"generation": 2, "set_at": 100.0, "set_by": "test", "config": body["config"]}
    assert client.get("/config").json() == config
    blob = png_bytes(bar_image(1))
    assert client.post("/classify", files=files(blob)).json()["point"] == LAC
    # the same state again (a repeated broadcast): 200, nothing switches
    assert client.put("/fleet", json=body, headers=ADMIN).json() == config
    assert metric(client, "skipvit_config_switches_total") == switches + 1
    # older: a lower generation, or the same generation set earlier
    for older in (fleet_body(1, 999.0, point="static"), fleet_body(2, 99.0, point="static")):
        r = client.put("/fleet", json=older, headers=ADMIN)
        assert r.status_code == 409 and "older than the one this replica holds (2" in r.json()["detail"]
        assert "Hint:" in r.json()["detail"]
    assert client.get("/config").json() == config  # not rolled back
    assert metric(client, "skipvit_fleet_generation") == 2
    assert metric(client, 'skipvit_fleet_adopted_total{via="put"}') == 1


def test_a_refused_state_applies_nothing_and_is_not_held(client):
    before = client.get("/config").json()
    r = client.put("/fleet", json=fleet_body(7, point="nope", max_batch_size=8), headers=ADMIN)
    assert r.status_code == 404 and "known points" in r.json()["detail"]
    r = client.put("/fleet", json=fleet_body(7, max_wait_ms=60_000.0), headers=ADMIN)
    assert r.status_code == 422  # past the knob's bound: the body does not validate
    r = client.put("/fleet", json={"generation": 7, "config": {}}, headers=ADMIN)
    assert r.status_code == 422 and "nothing to change" in str(r.json()["detail"])
    assert client.get("/config").json() == before


def test_a_put_config_of_its_own_shows_beside_the_fleet_state(client):
    held = client.get("/config").json()["fleet"]
    r = client.put("/config", json={"point": "static"}, headers=ADMIN)
    assert r.json()["point"] == "static" and r.json()["fleet"] == held
    # the next fleet state brings it back, knobs and all
    r = client.put("/fleet", json=fleet_body(8, point=LAC, max_batch_size=16, autopilot=None), headers=ADMIN)
    assert r.json()["point"] == LAC and r.json()["fleet"]["generation"] == 8


def offered(*states: FleetState | None):
    """A stand-in for ``peers.call_all``: each peer answers GET /config with one of ``states``."""

    def call_all(addrs, method, path, timeout, body=None, token=None):
        assert (method, path) == ("GET", "/config")
        return {
            f"10.0.0.{i}:8000": Reply(200, {"point": "x", "fleet": None if s is None else s.to_json()})
            for i, s in enumerate(states)
        } | {"10.0.0.99:8000": Reply(0, error="no answer: refused")}

    return call_all


def test_a_replica_starts_on_the_newest_state_its_peers_hold(tiny_fleet_bundle, monkeypatch):
    g3 = FleetState(3, {"point": LAC, "max_wait_ms": 2.0, "autopilot": None}, 50.0, "ops")
    g2 = FleetState(2, {"point": "static", "autopilot": None})
    monkeypatch.setattr(fleetsync.peers, "call_all", offered(g2, None, g3))
    app = create_app(
        settings(
            tiny_fleet_bundle, fleet_peers="127.0.0.1:9,127.0.0.1:10", fleet_sync_s=3600, autopilot_p95_ms=50
        )
    )
    with TestClient(app) as c:
        config = wait_ready(c).get("/config").json()
        assert config["point"] == LAC and config["max_wait_ms"] == 2.0
        assert config["fleet"]["generation"] == 3
        assert config["autopilot"] is None  # the fleet's state comes before SKIPVIT_AUTOPILOT_*
        assert metric(c, 'skipvit_fleet_adopted_total{via="start"}') == 1
        state = service_state(app)
        sync = state.fleet_sync
        assert sync is not None and sync.peers == [("127.0.0.1", 9), ("127.0.0.1", 10)]
        # later: a newer state that cannot apply here is tried once; a newer one after it applies
        bad = FleetState(4, {"point": "only-elsewhere", "autopilot": None})
        monkeypatch.setattr(fleetsync.peers, "call_all", offered(g3, bad))
        assert c.portal.call(sync.sync, "sync") is False
        assert sync.refused == {bad.key()} and state.fleet == g3
        assert c.portal.call(sync.sync, "sync") is False  # not again
        g5 = FleetState(5, {"point": "static", "max_wait_ms": 2.0, "autopilot": None})
        monkeypatch.setattr(fleetsync.peers, "call_all", offered(bad, g5, g3))
        assert c.portal.call(sync.sync, "sync") is True
        assert c.get("/config").json()["point"] == "static" and state.fleet == g5
        assert metric(c, 'skipvit_fleet_adopted_total{via="sync"}') == 1


def test_no_peer_answering_means_its_own_settings(tiny_fleet_bundle, monkeypatch):
    monkeypatch.setattr(fleetsync.peers, "call_all", offered())
    app = create_app(settings(tiny_fleet_bundle, fleet_peers="127.0.0.1:9", point=LAC))
    with TestClient(app) as c:
        config = wait_ready(c).get("/config").json()
        assert config["point"] == LAC and config["fleet"] is None
        assert metric(c, "skipvit_fleet_generation") == 0


def test_settings_refuse_a_peer_that_is_not_host_port(tiny_fleet_bundle):
    with pytest.raises(ValueError, match=r"SKIPVIT_FLEET_PEERS: peer 'skipvit-peers' is not host:port; Hint"):
        settings(tiny_fleet_bundle, fleet_peers="skipvit-peers")


def test_an_autopilot_in_the_fleet_state_runs_on_and_is_not_restarted_by_the_next_state(tiny_gate_bundle):
    with TestClient(create_app(settings(tiny_gate_bundle))) as c:
        state = service_state(wait_ready(c).app)
        pilot = {"p95_ms": 5000.0, "min_accuracy": 0.0, "family": "rl"}
        r = c.put("/fleet", json=fleet_body(1, point="rl", autopilot=pilot), headers=ADMIN)
        assert r.status_code == 200, r.text
        assert r.json()["autopilot"]["p95_ms"] == 5000.0 and state.pilot is not None
        running = state.pilot
        # the next state keeps the autopilot and changes a knob: the same autopilot runs on
        r = c.put("/fleet", json=fleet_body(2, point="rl", max_batch_size=16, autopilot=pilot), headers=ADMIN)
        assert r.status_code == 200 and r.json()["max_batch_size"] == 16
        assert state.pilot is running
        r = c.put("/fleet", json=fleet_body(3, point="static", autopilot=None), headers=ADMIN)
        assert r.json()["autopilot"] is None and r.json()["point"] == "static"


def test_a_peer_state_that_does_not_validate_is_refused_not_fatal(tiny_fleet_bundle, monkeypatch):
    broken = FleetState(9, {"max_batch_size": "many", "autopilot": None})
    monkeypatch.setattr(fleetsync.peers, "call_all", offered(broken))
    with TestClient(create_app(settings(tiny_fleet_bundle, fleet_peers="127.0.0.1:9"))) as c:
        config = wait_ready(c).get("/config").json()
        assert config["fleet"] is None and config["max_batch_size"] == 32
        assert service_state(c.app).fleet_sync.refused == {broken.key()}
