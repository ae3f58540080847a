"""The fleet state's rules (``service.fleet``), on literal states: order, adopt, pick, apply, merge,
convergence, peers; and ``service.peers``' resolution, on loopback names."""

from __future__ import annotations

import socket
import time

import pytest

from skipvit.service import peers
from skipvit.service.fleet import (
    FleetState,
    lag,
    merge,
    newest,
    next_generation,
    parse_peers,
    pick,
    to_apply,
    verdict,
)

A = FleetState(3, {"point": "rl", "autopilot": None}, set_at=100.0, set_by="ops@a")
PILOT = {"p95_ms": 50.0, "min_accuracy": 0.8, "family": ["rl", "rl-t0.8"]}  # a GET /config status


def test_newer_is_adopted_the_same_is_nothing_an_older_is_refused():
    assert verdict(None, A) == "adopt"
    assert verdict(A, FleetState(4, {"point": "static"})) == "adopt"
    assert verdict(A, FleetState(3, dict(A.config), 100.0, "someone else")) == "same"  # set_by: a note
    assert verdict(A, FleetState(2, {"point": "static"}, set_at=999.0)) == "older"  # generation first


def test_a_tie_of_generations_is_settled_by_set_at_then_by_the_config():
    later = FleetState(3, {"point": "static", "autopilot": None}, set_at=100.5)
    assert verdict(A, later) == "adopt" and verdict(later, A) == "older"
    twin = FleetState(3, {"point": "zzz", "autopilot": None}, set_at=100.0)  # same clock reading
    assert {verdict(A, twin), verdict(twin, A)} == {"adopt", "older"}  # one wins, everywhere alike
    assert newest([A, twin, None]) == newest([twin, None, A])


def test_pick_takes_the_newest_newer_state_not_refused():
    g4, g5 = FleetState(4, {"point": "a"}), FleetState(5, {"point": "b"})
    assert pick(A, [None, g4, FleetState(1, {}), g5], set()) == g5
    assert pick(A, [g4, g5], {g5.key()}) == g4  # g5 failed to apply here: the newest of the rest
    assert pick(A, [A, FleetState(2, {}), None], set()) is None  # nothing newer: keep A
    assert pick(None, [None, None], set()) is None  # no peer holds a state: own settings
    assert next_generation([None, g4, A]) == 5 and next_generation([None]) == 1


def test_a_state_is_read_back_from_get_config_and_nonsense_is_not_a_state():
    assert FleetState.from_json(A.to_json()) == A
    for bad in (None, [], {"generation": 0, "config": {}}, {"generation": True, "config": {}}):
        assert FleetState.from_json(bad) is None
    assert FleetState.from_json({"generation": 2, "config": "x"}) is None
    assert FleetState.from_json({"generation": 2, "config": {}, "set_at": "now"}) is None


def test_the_whole_config_applies_unless_a_matching_autopilot_runs():
    config = {"point": "rl", "max_batch_size": 16, "autopilot": {"p95_ms": 50.0, "min_accuracy": 0.8}}
    assert to_apply(config, None) == config  # no autopilot yet: start it, from rl
    assert to_apply(config, PILOT) == {"max_batch_size": 16}  # it runs as asked: it keeps the point
    other = {**PILOT, "p95_ms": 80.0}  # a PUT /config of its own changed the target
    assert to_apply(config, other) == config
    family = {**config, "autopilot": {"p95_ms": 50.0, "min_accuracy": 0.8, "family": "static"}}
    assert to_apply(family, PILOT) == family  # another family
    off = {"point": "rl", "autopilot": None}
    assert to_apply(off, PILOT) == off  # stop it, serve rl
    assert to_apply({"autopilot": {"p95_ms": 50.0, "min_accuracy": 0.8}}, PILOT) == {}  # nothing to do


def test_merge_keeps_what_is_not_named_and_always_names_the_autopilot():
    first = merge(None, point="rl")
    assert first == {"point": "rl", "autopilot": None}
    second = merge(first, knobs={"max_batch_size": 16, "max_wait_ms": None})
    assert second == {"point": "rl", "max_batch_size": 16, "autopilot": None}
    on = merge(second, autopilot={"p95_ms": 50.0, "min_accuracy": None, "family": None})
    assert on == {"point": "rl", "max_batch_size": 16, "autopilot": {"p95_ms": 50.0}}
    tighter = merge(on, autopilot={"min_accuracy": 0.8})
    assert tighter["autopilot"] == {"p95_ms": 50.0, "min_accuracy": 0.8}
    assert merge(tighter, autopilot="off", point="static")["autopilot"] is None
    assert merge(tighter, point="static", autopilot={"p95_ms": 40.0})["point"] == "static"  # a start


@pytest.mark.parametrize(
    ("base", "changes", "hint"),
    [
        (None, {}, "nothing to change"),
        (None, {"knobs": {"max_queue": None}}, "nothing to change"),
        ({"autopilot": {"p95_ms": 50.0}}, {"point": "rl"}, "--autopilot-off"),
        ({"autopilot": None}, {"autopilot": {"min_accuracy": 0.5}}, "--autopilot-p95-ms"),
    ],
)
def test_merge_refuses_what_cannot_stand_with_a_hint(base, changes, hint):
    with pytest.raises(ValueError, match="Hint:") as e:
        merge(base, **changes)
    assert hint in str(e.value)


def report(state: FleetState | None, point: str = "rl", pilot: dict | None = None, **knobs) -> dict:
    """A GET /config answer."""
    body = {"point": point, "max_batch_size": 32, "max_wait_ms": 5.0, "max_queue": 1024, **knobs}
    return body | {"autopilot": pilot, "fleet": None if state is None else state.to_json()}


def test_a_replica_is_on_a_state_when_it_holds_and_serves_it():
    assert lag(A, report(A)) is None
    assert lag(A, report(None)) == "holds no fleet state"
    assert "still on generation 2" in lag(A, report(FleetState(2, {})))
    assert "superseded by generation 4" in lag(A, report(FleetState(4, {}, set_by="b")))
    assert "serves 'static'" in lag(A, report(A, point="static"))
    assert "autopilot is on" in lag(A, report(A, pilot=PILOT))
    knobs = FleetState(3, {"max_batch_size": 16, "autopilot": None})
    assert "max_batch_size is 32" in lag(knobs, report(knobs))
    assert lag(knobs, report(knobs, max_batch_size=16)) is None
    piloted = FleetState(4, {"point": "rl", "autopilot": {"p95_ms": 50.0}})
    assert lag(piloted, report(piloted, point="rl-t0.8", pilot=PILOT)) is None  # its point: its own
    assert lag(piloted, report(piloted)) == "its autopilot is off"


def test_peers_parse_names_lists_and_ipv6_literals():
    assert parse_peers("skipvit-peers:8000") == [("skipvit-peers", 8000)]
    assert parse_peers(" 127.0.0.1:8001, 127.0.0.1:8002 ,") == [("127.0.0.1", 8001), ("127.0.0.1", 8002)]
    assert parse_peers("[::1]:8000") == [("::1", 8000)]
    assert parse_peers("") == parse_peers(None) == []
    for bad in ("host", "host:", ":8000", "host:0", "host:x", "::1:8000", "host:70000"):
        with pytest.raises(ValueError, match="Hint:"):
            parse_peers(bad)


def test_a_name_resolves_to_each_of_its_addresses_once():
    found, missing = peers.resolve([("127.0.0.1", 8001), ("localhost", 8001)])
    assert found == ["127.0.0.1:8001"] and not missing  # localhost: its IPv4 address, once
    found, missing = peers.resolve([("::1", 9), ("no-such-host.invalid", 8000)])
    assert found == ["[::1]:9"] and len(missing) == 1 and "no-such-host.invalid:8000" in missing[0]


def test_every_peer_answers_within_the_timeout_or_counts_as_no_answer():
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        addr = f"127.0.0.1:{silent.getsockname()[1]}"
        t0 = time.monotonic()
        replies = peers.call_all([addr], "GET", "/config", 0.3)
        assert time.monotonic() - t0 < 1.0
    assert replies[addr].status == 0 and not replies[addr].ok and "no answer" in replies[addr].detail()
