"""The SLO autopilot in a running app: turned on and off over PUT /config (admin token), shown in
GET /config, /pareto and /metrics, refused where it cannot work, set from SKIPVIT_AUTOPILOT_* at
start; requests without ?point= are served at its choice, those with one are left alone."""

from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from skipvit.service.app import create_app
from skipvit.service.settings import Settings
from tests.service.helpers import files, png_bytes, wait_ready

TOKEN = "t" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FAMILY = {"rl", "rl-t0.8", "nsga-a"}  # the gate points of tiny_gate_bundle: one batch key


def wait_decided(client, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pilot = client.get("/config").json()["autopilot"]
        if pilot is not None and not pilot["warming_up"] and pilot["point"] is not None:
            return pilot
        time.sleep(0.05)
    raise AssertionError(f"no decision after {timeout} s: {client.get('/config').json()}")


@pytest.fixture(scope="module")
def client(tiny_gate_bundle):
    app = create_app(Settings(bundle=tiny_gate_bundle, device="cpu", admin_token=TOKEN, engine="thread"))
    with TestClient(app) as c:
        yield wait_ready(c)


def test_on_shown_and_off(client):
    body = {"autopilot": {"p95_ms": 5000, "min_accuracy": 0.0, "family": "rl"}}
    assert client.put("/config", json=body).status_code == 401  # the admin token first
    r = client.put("/config", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    pilot = r.json()["autopilot"]
    assert set(pilot["family"]) == FAMILY and pilot["p95_ms"] == 5000
    assert set(client.get("/pareto").json()["autopilot_family"]) == FAMILY
    decided = wait_decided(client)
    # a generous target and an idle server: the most accurate point, and it is served
    assert decided["reason"] in ("hold", "up", "start")
    assert set(decided["vouched"]) <= FAMILY  # none yet: no whole window of answers
    assert client.get("/config").json()["point"] in FAMILY
    image = png_bytes(np.zeros((16, 16), np.uint8))
    for _ in range(3):
        assert client.post("/classify", files=files(image)).json()["point"] in FAMILY
    assert client.post("/classify?point=static", files=files(image)).json()["point"] == "static"  # left alone
    metrics = client.get("/metrics").text
    assert "skipvit_autopilot_enabled 1.0" in metrics
    assert 'skipvit_autopilot_p95_seconds{kind="target"} 5.0' in metrics
    assert "skipvit_autopilot_decisions_total" in metrics
    assert 'skipvit_autopilot_p95_seconds{kind="shed_at"} 4.0' in metrics  # 80% of the target, idle
    # while it is on, the point is its to choose
    r = client.put("/config", json={"point": "static"}, headers=AUTH)
    assert r.status_code == 409 and '"autopilot": null' in r.json()["detail"]
    r = client.put("/config", json={"autopilot": None, "point": "static"}, headers=AUTH)
    assert r.status_code == 200 and r.json()["autopilot"] is None and r.json()["point"] == "static"
    assert client.get("/pareto").json()["autopilot_family"] is None
    assert "skipvit_autopilot_enabled 0.0" in client.get("/metrics").text


def test_the_warm_up_probes_are_not_counted_as_load(client):
    # the warm-up queues a blank image and a full batch per point: counted as arrivals, they read as
    # a burst of load in the window of the first decisions, which then move down for nothing
    body = {"autopilot": {"p95_ms": 5000, "min_accuracy": 0.0, "family": "rl"}}
    assert client.put("/config", json=body, headers=AUTH).status_code == 200
    try:
        decided = wait_decided(client)
        assert decided["arrival_rate"] == 0, decided
    finally:
        assert client.put("/config", json={"autopilot": None}, headers=AUTH).status_code == 200


def test_shedding_at_the_target_never_refuses_an_empty_queue(client):
    from skipvit.service.state import service_state

    r = client.put("/config", json={"autopilot": {"p95_ms": 50, "family": "rl"}}, headers=AUTH)
    assert r.status_code == 200, r.text
    try:
        wait_decided(client)
        batcher = service_state(client.app).batcher
        batcher._compute_s = 10.0  # a batch estimate left far past the target by a burst
        image = png_bytes(np.zeros((16, 16), np.uint8))
        assert client.post("/classify", files=files(image)).status_code == 200  # nothing queued: admitted
    finally:
        client.put("/config", json={"autopilot": None}, headers=AUTH)


@contextlib.contextmanager
def pilot_by_hand(client):
    """The autopilot on (50 ms, family ``rl``) with its loop stopped after its first decision, so a
    test sets its decisions by hand; the service's state is yielded, and the autopilot is off after."""
    from skipvit.service.state import service_state

    r = client.put("/config", json={"autopilot": {"p95_ms": 50, "family": "rl"}}, headers=AUTH)
    assert r.status_code == 200, r.text
    try:
        wait_decided(client)
        state = service_state(client.app)
        state.pilot.cancel()
        yield state
    finally:
        client.put("/config", json={"autopilot": None}, headers=AUTH)


def test_shedding_at_the_target_only_at_the_floor(client):
    # above the floor a cheaper point is the answer to more load: a wait expected past the target
    # is admitted (at low load such estimates refused requests a point carried, and the refusals
    # then moved the point down); at the floor, past capacity, it is refused
    from dataclasses import replace

    with pilot_by_hand(client) as state:
        batcher, image = state.batcher, png_bytes(np.zeros((16, 16), np.uint8))

        def post_while_busy():  # the estimate says the engine is busy for 1 s; it is in fact idle
            batcher._compute_s, batcher._free_at = 0.5, batcher.clock() + 1.0
            return client.post("/classify", files=files(image))

        state.pilot.last = replace(state.pilot.last, reason="hold", predicted_p95_s=math.inf)
        assert post_while_busy().status_code == 200
        # at the floor, once the load has fallen (its prediction at the offered rate well inside
        # the target), refusals would only hold it there: admitted
        state.pilot.last = replace(state.pilot.last, reason="floor", predicted_p95_s=0.01)
        assert post_while_busy().status_code == 200
        state.pilot.last = replace(state.pilot.last, reason="floor", predicted_p95_s=math.inf)
        r = post_while_busy()
        assert r.status_code == 503 and "p95 target" in r.json()["detail"], r.text


def test_at_the_floor_the_images_let_wait_are_capped_once_the_share_is_at_its_lowest(client, monkeypatch):
    # with the engine expected free the wait rule admits anything up to a batch; the cap the
    # autopilot learns at its lowest share refuses once that many images wait, and only then
    from dataclasses import replace

    from skipvit.service.batcher import Batcher
    from skipvit.service.classify import Classify

    with pilot_by_hand(client) as state:
        state.pilot.last = replace(state.pilot.last, reason="floor", predicted_p95_s=math.inf)
        state.batcher._free_at = state.batcher.clock()  # the engine is expected free
        monkeypatch.setattr(Batcher, "queued_images", property(lambda self: 3))
        refusal = Classify(state).refusal
        assert state.pilot.shed_waiting(state.batcher.knobs.max_batch_size) is None
        assert refusal() is None
        state.pilot.shed_fill = 4 / state.batcher.knobs.max_batch_size
        assert refusal() is None  # three wait, four may
        state.pilot.shed_fill = 2 / state.batcher.knobs.max_batch_size
        failure = refusal()
        assert failure is not None and failure.kind.status == 503 and "2 images wait" in str(failure)
        assert client.get("/config").json()["autopilot"]["shed_waiting"] == 2
        state.pilot.last = replace(state.pilot.last, reason="hold")
        assert refusal() is None  # off the floor nothing is shed
        monkeypatch.undo()


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"autopilot": {"p95_ms": 100, "family": "static"}}, "nothing to choose"),
        ({"autopilot": {"p95_ms": 100, "min_accuracy": 1.0, "family": "rl"}}, "lower min_accuracy"),
        ({"autopilot": {"p95_ms": 100, "family": "no-such-point"}}, "unknown point"),
    ],
)
def test_refused_where_it_cannot_work(client, body, words):
    r = client.put("/config", json=body, headers=AUTH)
    assert r.status_code in (404, 409) and words in r.json()["detail"], r.text
    assert client.get("/config").json()["autopilot"] is None  # nothing of a refused update applies


@pytest.mark.parametrize("body", [{"autopilot": {"p95_ms": 0}}, {"autopilot": {"p95_ms": 100, "x": 1}}, {}])
def test_malformed_bodies_are_422(client, body):
    assert client.put("/config", json=body, headers=AUTH).status_code == 422


def test_on_from_the_settings_at_start(tiny_gate_bundle):
    settings = Settings(
        bundle=tiny_gate_bundle,
        device="cpu",
        admin_token=TOKEN,
        engine="thread",
        point="rl",
        autopilot_p95_ms=2000,
        autopilot_min_accuracy=0.0,
    )
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        pilot = wait_decided(c)
        assert set(pilot["family"]) == FAMILY and pilot["p95_ms"] == 2000


def test_the_shedding_share_follows_the_observed_p95(tiny_gate_bundle):
    # at the floor the admission's wait estimate leaves out the HTTP work: while the last second's
    # answers pass the aim the share of the target admitted is cut in proportion (at most by half
    # at once), then, at its lowest, the images let wait; both come back, a little at a time and
    # in the other order, once the answers are well under the aim
    from skipvit.model.bundle import load_bundle
    from skipvit.service.autopilot import ControllerState, Decision
    from skipvit.service.pilot import (
        SHED_AIM,
        SHED_AT,
        SHED_AT_MIN,
        SHED_FILL_MIN,
        SHED_FILL_RAISE,
        Pilot,
        pilot_config,
    )

    bundle = load_bundle(tiny_gate_bundle)
    t = 0.0
    pilot = Pilot(
        pilot_config(bundle, 100, 0.0, "rl"), bundle, batcher=None, on_switch=lambda p: None, clock=lambda: t
    )
    pilot.state = ControllerState("rl", since=0.0)
    floor = Decision("rl", "floor", math.inf, pilot.state)

    def adjust(decision, observed_s, seconds=1.0):
        nonlocal t
        for _ in range(int(seconds * 4)):  # four decisions a second, ten answers between two
            t += 0.25
            for _ in range(10):
                pilot.record(observed_s, "rl")
            pilot._adjust_shedding(decision, t)

    assert (pilot.shed_at, pilot.shed_waiting(32)) == (SHED_AT, None)
    adjust(floor, 0.090)  # past the aim: cut in proportion, once in that second
    assert pilot.shed_at == pytest.approx(SHED_AT * SHED_AIM * 0.100 / 0.090)
    was = pilot.shed_at
    adjust(floor, 0.500)  # far past it: halved, no more
    assert pilot.shed_at == pytest.approx(was / 2)
    adjust(floor, 0.150)
    assert pilot.shed_at == SHED_AT_MIN and pilot.shed_waiting(32) is None  # at its lowest...
    adjust(floor, 0.150)
    assert pilot.shed_waiting(32) == 16  # ...then the images let wait: halved
    adjust(floor, 0.150, seconds=20)
    assert pilot.shed_waiting(32) == round(SHED_FILL_MIN * 32)  # bounded below
    adjust(floor, 0.050, seconds=5)
    assert pilot.shed_waiting(32) == round(SHED_FILL_MIN * 32)  # between the two shares of the target: held
    adjust(floor, 0.030, seconds=3)
    lowest, most = round(SHED_FILL_MIN * 32), round((SHED_FILL_MIN + 3 * SHED_FILL_RAISE) * 32)
    assert lowest < pilot.shed_waiting(32) <= most  # well under: up a little at a time
    assert pilot.shed_at == SHED_AT_MIN  # the images come back first
    adjust(floor, 0.030, seconds=20)
    assert pilot.shed_waiting(32) is None and SHED_AT_MIN < pilot.shed_at <= SHED_AT  # then the share
    learned = pilot.shed_at
    adjust(Decision("rl", "up", 0.02, pilot.state), 0.150, seconds=5)
    assert (
        pilot.shed_at == learned
    )  # off the floor nothing sheds, and the share is kept for the next overload
    pilot.last = Decision("rl", "hold", 0.02, pilot.state)
    assert not pilot.shedding
    t += 10  # the floor again, with no answer in the last second yet: nothing to learn from
    pilot._adjust_shedding(floor, t)
    assert pilot.shed_at == learned


def test_shedding_goes_on_for_a_while_after_the_floor_is_predicted_inside(tiny_gate_bundle):
    # at the edge of the floor's capacity its prediction dips inside for a tick or two: shedding
    # holds through such dips (a quarter of a second without it lets a backlog in), and stops once
    # the prediction stays inside (the load fell: refusals would only keep the point at the floor)
    from skipvit.model.bundle import load_bundle
    from skipvit.service.autopilot import ControllerState, Decision
    from skipvit.service.pilot import SHED_HOLD_S, Pilot, pilot_config

    bundle = load_bundle(tiny_gate_bundle)
    t = 0.0
    pilot = Pilot(
        pilot_config(bundle, 100, 0.0, "rl"), bundle, batcher=None, on_switch=lambda p: None, clock=lambda: t
    )
    state = ControllerState("rl", since=0.0)

    def decided(reason, predicted_s):
        pilot.last = Decision("rl", reason, predicted_s, state)
        pilot._note_past(pilot.last, t)
        return pilot.shedding

    assert not decided("floor", 0.05)  # at the floor, inside: nothing to shed
    assert decided("floor", math.inf)
    t = 0.25
    assert decided("floor", 0.05)  # a dip inside
    t = 0.5
    assert decided("floor", math.inf)
    t = 0.75
    assert decided("floor", 0.05)
    t = 0.75 + SHED_HOLD_S - 0.25
    assert decided("floor", 0.05)
    t = 0.75 + SHED_HOLD_S
    assert not decided("floor", 0.05)  # inside for the whole hold: the load fell
    t += 0.25
    assert not decided("floor", 0.05)
    assert not decided("hold", 0.2)  # off the floor, never
    assert decided("floor", math.inf)
    t += 0.25
    assert not decided("up", 0.05)


def warmed_up(bundle_dir, seconds, answer):
    """A ``Pilot`` on ``bundle_dir``'s ``rl`` family after its warm-up against a fake batcher that
    times a batch of ``n`` images at ``seconds(n)`` and answers ``answer(n)``."""
    import asyncio
    from types import SimpleNamespace

    from skipvit.model.bundle import load_bundle
    from skipvit.service.pilot import Pilot, pilot_config

    bundle = load_bundle(bundle_dir)

    class FakeBatcher:
        knobs = SimpleNamespace(max_batch_size=32)
        active = "rl"

        def submit(self, images, point):
            n = int(images.shape[0])
            pilot.computed(point, n, seconds(n))
            done = asyncio.get_running_loop().create_future()
            done.set_result(answer(n))
            return done

    pilot = Pilot(pilot_config(bundle, 100, 0.0, "rl"), bundle, FakeBatcher(), on_switch=lambda p: None)
    asyncio.run(pilot.warm_up())
    return pilot, bundle


def test_a_warm_up_whose_timings_come_out_flat_still_starts(tiny_gate_bundle):
    # on a tiny model or a busy machine a full batch can time no slower than one image: the line is
    # then flat, not a reason for the autopilot to give up
    pilot, _ = warmed_up(tiny_gate_bundle, lambda n: 0.010, lambda n: None)  # the same for 1 and 32
    assert pilot.costs is not None and set(pilot.costs.points) == set(pilot.config.family)
    assert pilot.costs.batch_s("rl", 32) == pytest.approx(0.010, rel=1e-3)


def test_the_warm_up_scales_each_line_by_the_layers_real_images_run(tiny_gate_bundle):
    # blank probe images take their own path through the gates (often the same few layers at every
    # point): the per-image part of each line is scaled by the point's recorded mean layers over
    # the layers the blank batch ran, so the order by cost is the real traffic's
    from types import SimpleNamespace

    from skipvit.service.pilot import point_layers

    one_layer = SimpleNamespace(layers_executed=1)
    pilot, bundle = warmed_up(
        tiny_gate_bundle, lambda n: 0.001 + 0.0005 * n, lambda n: SimpleNamespace(rows=[one_layer] * n)
    )
    family = pilot.config.family
    assert len(family) >= 2 and set(pilot.probe_layers) == set(family)
    for p in family:
        layers = point_layers(bundle.point(p))
        assert layers is not None and layers > 0
        assert pilot.costs.points[p].per_image_s == pytest.approx(0.0005 * layers, rel=1e-6)
        assert pilot.costs.points[p].fixed_s == pytest.approx(0.001, rel=1e-6)


def test_an_autopilot_that_cannot_start_says_why(tiny_gate_bundle):
    # every warm-up probe refused: nothing timed; /config must say it stopped, not "warming up" forever
    import asyncio
    from types import SimpleNamespace

    from skipvit.model.bundle import load_bundle
    from skipvit.service.pilot import Pilot, pilot_config

    bundle = load_bundle(tiny_gate_bundle)

    class RefusingBatcher:
        knobs = SimpleNamespace(max_batch_size=32)
        active = "rl"
        queued_images = 0

        def submit(self, images, point):
            raise RuntimeError("the queue is full")

    pilot = Pilot(pilot_config(bundle, 100, 0.0, "rl"), bundle, RefusingBatcher(), on_switch=lambda p: None)
    asyncio.run(pilot._run())  # ends: the warm-up timed nothing
    status = pilot.status()
    assert status["warming_up"] is False and "timed no batch" in status["stopped"]
