"""`skipvit fleet` without a fleet: the errors a user can act on (no peers, no token, no replica
answering, flags that cannot stand together), where the admin token comes from, and the table."""

from __future__ import annotations

import argparse

import pytest

from skipvit.cli import main
from skipvit.service import fleetctl
from skipvit.service.fleet import FleetState
from skipvit.service.peers import Reply
from tests.service.server import free_port


def error_of(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        main(["fleet", *argv])
    assert e.value.code == 2
    return capsys.readouterr().err


def test_no_peers_no_replica_no_token_are_errors_with_a_hint(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("SKIPVIT_FLEET_PEERS", raising=False)
    monkeypatch.setenv("SKIPVIT_ADMIN_TOKEN", "t" * 20)
    assert "no replicas named; Hint:" in error_of(capsys, "status")
    assert "not host:port; Hint:" in error_of(capsys, "status", "--peers", "skipvit-peers")
    err = error_of(capsys, "set", "--point", "rl", "--peers", "no-such-host.invalid:8000")
    assert "no replica found: no-such-host.invalid:8000" in err and "Hint:" in err
    closed = f"127.0.0.1:{free_port()}"
    err = error_of(capsys, "set", "--point", "rl", "--peers", closed)
    assert f"no replica answered GET /config ({closed}: no answer" in err and "Hint:" in err
    monkeypatch.delenv("SKIPVIT_ADMIN_TOKEN")
    monkeypatch.setenv("SKIPVIT_ADMIN_TOKEN_FILE", str(tmp_path / "missing"))
    err = error_of(capsys, "set", "--point", "rl", "--peers", closed)
    assert "no admin token:" in err and "Hint: pass --token-file FILE" in err


def test_the_admin_token_comes_from_the_flag_then_the_environment_then_the_file(monkeypatch, tmp_path):
    flag, file = tmp_path / "flag", tmp_path / "file"
    flag.write_text("from-the-flag\n")
    file.write_text("from-the-file\n")
    monkeypatch.setenv("SKIPVIT_ADMIN_TOKEN_FILE", str(file))
    monkeypatch.setenv("SKIPVIT_ADMIN_TOKEN", "from-the-env")
    assert fleetctl.admin_token(str(flag)) == "from-the-flag"
    assert fleetctl.admin_token(None) == "from-the-env"
    monkeypatch.delenv("SKIPVIT_ADMIN_TOKEN")
    assert fleetctl.admin_token(None) == "from-the-file"


def args(*extra: str, **flags) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    fleetctl.add_arguments(parser)
    words = ["set", *extra] + [w for k, v in flags.items() for w in (f"--{k.replace('_', '-')}", str(v))]
    return parser.parse_args(words)


def test_the_next_state_starts_from_the_newest_known_and_names_the_autopilot():
    g2 = FleetState(2, {"point": "rl", "max_batch_size": 16, "autopilot": None})
    state = fleetctl.next_state(args(max_wait_ms=2), [None, FleetState(1, {"point": "x"}), g2])
    assert state.generation == 3 and "@" in state.set_by and state.set_at > 0
    assert state.config == {"point": "rl", "max_batch_size": 16, "max_wait_ms": 2.0, "autopilot": None}
    on = fleetctl.next_state(args(autopilot_p95_ms=50, autopilot_family="rl"), [state])
    assert on.config["autopilot"] == {"p95_ms": 50.0, "family": "rl"} and on.generation == 4
    with pytest.raises(ValueError, match="--autopilot-off"):
        fleetctl.next_state(args(point="static"), [on])
    with pytest.raises(SystemExit):  # argparse: not allowed with each other
        args("--autopilot-off", autopilot_p95_ms=50)


def test_a_row_says_why_a_replica_is_not_on_the_state():
    g2 = FleetState(2, {"point": "rl", "autopilot": None}, set_by="ops")
    config = {"point": "rl", "max_batch_size": 32, "max_wait_ms": 5.0, "max_queue": 1024, "autopilot": None}
    on = Reply(200, {**config, "fleet": g2.to_json()})
    assert fleetctl.row("a:1", on, g2) == {
        "replica": "a:1",
        "point": "rl",
        "generation": 2,
        "autopilot": None,
        "status": "ok",
    }
    behind = Reply(200, {**config, "point": "static", "fleet": None})
    refused = Reply(404, {"detail": "unknown point 'rl'; known points: static (see GET /pareto)"})
    assert fleetctl.row("b:1", behind, g2)["status"] == "holds no fleet state"
    assert fleetctl.row("b:1", behind, g2, sent=refused)["status"].startswith("PUT /fleet 404: unknown point")
    gone = fleetctl.row("c:1", Reply(0, error="no answer: timed out"), g2)
    assert gone["point"] is None and gone["status"] == "no answer: timed out"
    piloted = Reply(200, {**config, "autopilot": {"p95_ms": 50.0, "warming_up": True}, "fleet": None})
    assert fleetctl.row("d:1", piloted, None)["autopilot"] == "p95 50 ms, warming up"
