"""`skipvit fleet set` and `skipvit fleet status`: one switch for every replica of a fleet, and
where each replica stands. (The rules are ``service.fleet``'s; the replicas' side is
``service.fleetsync``; the mechanism and its bound are in docs/scaling.md.)

``set``: find the replicas (``--peers``, default ``SKIPVIT_FLEET_PEERS``: a headless Service's
name resolves to every replica); read each one's ``GET /config``; make the next fleet state (the
newest one known, with the flags' changes; generation one above the highest); send it with
``PUT /fleet`` to one replica first, so that a refusal (a wrong token, an unknown point) stops
here with nothing changed, then to all the others at once; then read ``GET /config`` of each
until every one is on the new state or ``--timeout`` passes. Prints a row per replica and exits 1
unless every one is on it.

``status``: the same rows, against the newest state that any replica holds; exits 1 unless every
replica answers and is on it.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from skipvit.service import fleet, peers
from skipvit.service.auth import DEFAULT_TOKEN_FILE
from skipvit.service.fleet import KNOBS, FleetState

REQUEST_S = 2.0  # the longest one request to one replica may take
POLL_S = 0.1


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    s = sub.add_parser("set", help="switch every replica: the point, the batching knobs, the autopilot")
    s.add_argument("--point", default=None, help="the point every replica serves")
    s.add_argument("--max-batch-size", type=int, default=None, metavar="N")
    s.add_argument("--max-wait-ms", type=float, default=None, metavar="MS")
    s.add_argument("--max-queue", type=int, default=None, metavar="N")
    pilot = s.add_mutually_exclusive_group()
    pilot.add_argument(
        "--autopilot-p95-ms",
        type=float,
        default=None,
        metavar="MS",
        help="turn the autopilot on (or change its target): each replica chooses its point for its own load",
    )
    pilot.add_argument("--autopilot-off", action="store_true", help="turn the autopilot off")
    s.add_argument("--autopilot-min-accuracy", type=float, default=None, metavar="A")
    s.add_argument("--autopilot-family", default=None, metavar="ID", help="a point of the family")
    s.add_argument(
        "--token-file",
        default=None,
        help="file holding the admin token (default: SKIPVIT_ADMIN_TOKEN, else the file "
        "SKIPVIT_ADMIN_TOKEN_FILE or ~/.skipvit/admin-token)",
    )
    add_common(s, "how long every replica has to be on the new state")
    add_common(sub.add_parser("status", help="each replica's point and fleet generation"), "")


def add_common(p: argparse.ArgumentParser, timeout_help: str) -> None:
    p.add_argument(
        "--peers",
        default=os.environ.get("SKIPVIT_FLEET_PEERS"),
        help="host:port of a headless Service, or a comma-separated list (default: SKIPVIT_FLEET_PEERS)",
    )
    if timeout_help:
        p.add_argument("--timeout", type=float, default=10.0, help=f"{timeout_help} (s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> None:
    addrs = replicas(args.peers)
    ok = set_state(addrs, args) if args.action == "set" else show_status(addrs, args)
    if not ok:
        raise SystemExit(1)


def replicas(text: str | None) -> list[str]:
    """Every replica's address; ``ValueError`` with a hint when there is none."""
    named = fleet.parse_peers(text)
    if not named:
        raise ValueError(
            "no replicas named; Hint: pass --peers HOST:PORT[,HOST:PORT...] or set SKIPVIT_FLEET_PEERS "
            "(in a cluster: the headless Service, e.g. skipvit-peers:8000, from inside it)"
        )
    addrs, missing = peers.resolve(named)
    if not addrs:
        raise ValueError(
            f"no replica found: {'; '.join(missing)}; Hint: run it where the name resolves (in a "
            "cluster: kubectl exec into a replica), or list the replicas' addresses"
        )
    return addrs


def admin_token(token_file: str | None) -> str:
    if token_file is None and os.environ.get("SKIPVIT_ADMIN_TOKEN"):
        return os.environ["SKIPVIT_ADMIN_TOKEN"].strip()
    path = Path(token_file or os.environ.get("SKIPVIT_ADMIN_TOKEN_FILE") or DEFAULT_TOKEN_FILE)
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise ValueError(
            f"no admin token: {path} cannot be read ({e.strerror}); Hint: pass --token-file FILE, "
            "or set SKIPVIT_ADMIN_TOKEN to the token the replicas were given"
        ) from None
    if not token:
        raise ValueError(f"no admin token: {path} is empty; Hint: pass --token-file FILE")
    return token


def read_configs(addrs: list[str], timeout: float = REQUEST_S) -> dict[str, peers.Reply]:
    return peers.call_all(addrs, "GET", "/config", timeout)


def held(reply: peers.Reply) -> FleetState | None:
    return (
        FleetState.from_json(reply.body.get("fleet")) if reply.ok and isinstance(reply.body, dict) else None
    )


def next_state(args: argparse.Namespace, known: list[FleetState | None]) -> FleetState:
    base = fleet.newest(known)
    pilot = {
        "p95_ms": args.autopilot_p95_ms,
        "min_accuracy": args.autopilot_min_accuracy,
        "family": args.autopilot_family,
    }
    autopilot = "off" if args.autopilot_off else pilot if any(v is not None for v in pilot.values()) else None
    config = fleet.merge(
        None if base is None else base.config,
        point=args.point,
        knobs={k: getattr(args, k) for k in KNOBS},
        autopilot=autopilot,
    )
    return FleetState(fleet.next_generation(known), config, round(time.time(), 3), who())


def who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for the uid (a container)
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def set_state(addrs: list[str], args: argparse.Namespace) -> bool:
    token = admin_token(args.token_file)
    t0 = time.monotonic()
    first = read_configs(addrs)
    answering = [a for a, r in first.items() if r.ok]
    if not answering:
        why = "; ".join(f"{a}: {r.detail()}" for a, r in first.items())
        raise ValueError(
            f"no replica answered GET /config ({why}); Hint: check --peers and that the replicas are "
            "ready (skipvit fleet status shows each one)"
        )
    state = next_state(args, [held(first[a]) for a in answering])
    body = state.to_json()
    canary = peers.call(answering[0], "PUT", "/fleet", REQUEST_S, body, token)
    if not canary.ok:
        raise ValueError(refusal(answering[0], canary))
    rest = [a for a in addrs if a != answering[0]]
    sent = {answering[0]: canary, **peers.call_all(rest, "PUT", "/fleet", REQUEST_S, body, token)}
    reports = converge(addrs, state, t0 + args.timeout)
    took = time.monotonic() - t0
    rows = [row(a, reports[a], state, sent.get(a)) for a in addrs]
    done = sum(r["status"] == "ok" for r in rows)
    summary = f"{done} of {len(addrs)} replicas on generation {state.generation} after {took:.2f} s"
    show(state, rows, summary, args.json)
    return done == len(addrs)


def refusal(addr: str, reply: peers.Reply) -> str:
    """Why the first replica did not take the new state, ending in a hint."""
    if reply.status == 401:
        return (
            f"{addr} refused the admin token (401), nothing was changed; Hint: pass --token-file FILE "
            "or set SKIPVIT_ADMIN_TOKEN to the token the replicas were given"
        )
    if reply.status == 0:
        return (
            f"{addr} did not answer PUT /fleet ({reply.detail()}); it may hold the new state or not, the "
            "others were not sent it; Hint: skipvit fleet status, then set again"
        )
    detail = reply.detail()
    if "Hint:" not in detail:
        detail += "; Hint: correct the value named and run it again"
    return f"{addr} refused the change ({reply.status}), nothing was changed: {detail}"


def converge(addrs: list[str], state: FleetState, deadline: float) -> dict[str, peers.Reply]:
    """``GET /config`` of each replica until every one is on ``state`` or ``deadline`` passes."""
    last: dict[str, peers.Reply] = {}
    pending = list(addrs)
    while pending:
        timeout = max(0.1, min(REQUEST_S, deadline - time.monotonic()))
        last.update(read_configs(pending, timeout))
        pending = [a for a in pending if not (last[a].ok and fleet.lag(state, last[a].body) is None)]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)
    return last


def row(addr: str, reply: peers.Reply, state: FleetState | None, sent: peers.Reply | None = None) -> dict:
    if not reply.ok:
        return {
            "replica": addr,
            "point": None,
            "generation": None,
            "autopilot": None,
            "status": reply.detail(),
        }
    body: dict[str, Any] = reply.body
    mine = held(reply)
    pilot = body.get("autopilot")
    why = "no fleet state: its own settings" if state is None else fleet.lag(state, body)
    if why is not None and sent is not None and not sent.ok:  # say why it is not on the state
        why = f"PUT /fleet {sent.status or 'failed'}: {sent.detail()}"
    return {
        "replica": addr,
        "point": body.get("point"),
        "generation": None if mine is None else mine.generation,
        "autopilot": None if pilot is None else pilot_text(pilot),
        "status": "ok" if why is None else why,
    }


def pilot_text(pilot: dict) -> str:
    return f"p95 {pilot['p95_ms']:g} ms" + (", warming up" if pilot.get("warming_up") else "")


def show_status(addrs: list[str], args: argparse.Namespace) -> bool:
    replies = read_configs(addrs)
    state = fleet.newest(held(r) for r in replies.values())
    rows = [row(a, replies[a], state) for a in addrs]
    if state is None:
        summary = f"{len(addrs)} replicas, no fleet state: each serves its own settings"
    else:
        done = sum(r["status"] == "ok" for r in rows)
        summary = f"{done} of {len(addrs)} replicas on generation {state.generation} (set by {state.set_by})"
    show(state, rows, summary, args.json)
    return all(r["status"] in ("ok", "no fleet state: its own settings") for r in rows)


def show(state: FleetState | None, rows: list[dict], summary: str, as_json: bool) -> None:
    if as_json:
        doc = {"state": None if state is None else state.to_json(), "replicas": rows, "summary": summary}
        print(json.dumps(doc, indent=2))
        return
    if state is not None:
        print(f"fleet state {state.generation}: {json.dumps(state.config, sort_keys=True)}")
    names = ("replica", "point", "generation", "autopilot", "status")
    cells = [[n.upper() for n in names]]
    cells += [["-" if r[n] is None else str(r[n]) for n in names] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(names) - 1)]
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=False)) + "  " + c[-1])
    print(summary)
