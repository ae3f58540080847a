"""The fleet state and its rules: which state a replica adopts, what it applies, how a new one is made.

A *fleet state* is the ``PUT /config`` body that every replica of a fleet should serve (``config``),
with a ``generation``, when it was set (``set_at``, Unix seconds) and by whom (``set_by``). Each
replica holds the state it last applied; ``skipvit fleet set`` broadcasts a new one, and replicas
pull a newer one from their peers at start and every few seconds (``service.fleetsync``). Pure:
no HTTP, no clock, no pydantic; the service and the CLI both decide here.

- **Order.** States are ordered by ``(generation, set_at, config)`` (the config as canonical JSON):
  a total order, so replicas that see the same states pick the same one, whatever order they see
  them in. Two writers that pick the same generation are settled by ``set_at`` (the later wins;
  clocks only break the tie), and the loser's CLI sees its state superseded.
- **Adopt.** A replica adopts an offered state newer than the one it holds (``verdict`` is
  ``"adopt"``); the same state again changes nothing (``"same"``: a repeated broadcast is
  harmless); an older one is refused (``"older"``: a late broadcast cannot roll the fleet back).
  From its peers it adopts the newest state newer than its own that it has not failed to apply
  before (``pick``).
- **Apply.** A replica applies the whole config of the adopted state (``to_apply``), so a replica
  that drifted (a ``PUT /config`` of its own) comes back to the fleet's point, except an autopilot
  that runs with the target asked for already: it keeps running (and choosing the point), rather
  than warming up again.
- **Make.** ``merge`` makes the next config from the newest known one and the changes asked for:
  what is not named keeps its value, so a state is always the whole desired config, and a replica
  that starts later gets all of it. The autopilot is always named (null: off). A point named while
  the fleet's autopilot is on is refused unless the autopilot is named too (as ``PUT /config``
  refuses it). ``next_generation`` is one above the highest known.
- **Converged.** A replica is on a state when it holds it and serves it: its point is the state's
  (unless the state's autopilot chooses the point), its knobs are the state's, its autopilot is on
  iff the state's is (``lag``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

KNOBS = ("max_batch_size", "max_wait_ms", "max_queue")
Verdict = Literal["adopt", "same", "older"]
Key = tuple[int, float, str]


@dataclass(frozen=True)
class FleetState:
    generation: int
    config: Mapping[str, Any] = field(default_factory=dict)  # a PUT /config body
    set_at: float = 0.0  # Unix seconds, by the setter's clock
    set_by: str = ""

    def key(self) -> Key:
        return (self.generation, self.set_at, json.dumps(self.config, sort_keys=True))

    def to_json(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "set_at": self.set_at,
            "set_by": self.set_by,
            "config": dict(self.config),
        }

    @classmethod
    def from_json(cls, body: Any) -> FleetState | None:
        """The state in a ``GET /config`` answer's ``fleet`` (None: none, or not a state)."""
        if not isinstance(body, Mapping):
            return None
        gen, config = body.get("generation"), body.get("config")
        set_at, set_by = body.get("set_at", 0.0), body.get("set_by", "")
        if not isinstance(gen, int) or isinstance(gen, bool) or gen < 1 or not isinstance(config, Mapping):
            return None
        if not isinstance(set_at, int | float) or isinstance(set_at, bool) or not isinstance(set_by, str):
            return None
        return cls(gen, dict(config), float(set_at), set_by)


def verdict(held: FleetState | None, offered: FleetState) -> Verdict:
    if held is None or offered.key() > held.key():
        return "adopt"
    return "same" if offered.key() == held.key() else "older"


def newest(states: Iterable[FleetState | None]) -> FleetState | None:
    known = [s for s in states if s is not None]
    return max(known, key=FleetState.key) if known else None


def pick(
    held: FleetState | None, offered: Iterable[FleetState | None], refused: set[Key]
) -> FleetState | None:
    """The state to adopt from the peers' ``offered`` ones: the newest newer than ``held`` whose key
    is not in ``refused`` (states this replica failed to apply); None: keep ``held``."""
    fresh = [s for s in offered if s is not None and s.key() not in refused and verdict(held, s) == "adopt"]
    return newest(fresh)


def next_generation(known: Iterable[FleetState | None]) -> int:
    return max((s.generation for s in known if s is not None), default=0) + 1


def pilot_matches(wanted: Mapping[str, Any], running: Mapping[str, Any] | None) -> bool:
    """True if an autopilot runs (``running``: its ``GET /config`` status) with the target, floor and
    family that ``wanted`` (a ``PUT /config`` autopilot) asks for; no family asked: any."""
    if running is None:
        return False
    family = wanted.get("family")
    return (
        float(wanted["p95_ms"]) == float(running["p95_ms"])
        and float(wanted.get("min_accuracy", 0.0)) == float(running["min_accuracy"])
        and (family is None or family in running["family"])
    )


def to_apply(config: Mapping[str, Any], running_pilot: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``PUT /config`` body a replica applies to serve ``config``: all of it, less the autopilot
    and the point when an autopilot that matches runs already (it chooses the point). May be empty:
    nothing to change."""
    wanted = config.get("autopilot")
    if wanted is not None and pilot_matches(wanted, running_pilot):
        return {k: v for k, v in config.items() if k not in ("autopilot", "point")}
    return dict(config)


def merge(
    base: Mapping[str, Any] | None,
    point: str | None = None,
    knobs: Mapping[str, Any] | None = None,
    autopilot: Mapping[str, Any] | Literal["off"] | None = None,
) -> dict[str, Any]:
    """The next fleet config: ``base`` (the newest state's, or None) with the changes asked for.
    ``knobs``: new values of ``KNOBS`` (None: unchanged); ``autopilot``: ``"off"``, the fields to
    change (``p95_ms``, ``min_accuracy``, ``family``), or None (unchanged). ``ValueError`` with a
    hint when nothing changes or the change cannot stand."""
    changed_knobs = {k: v for k, v in (knobs or {}).items() if v is not None}
    if point is None and not changed_knobs and autopilot is None:
        raise ValueError("nothing to change; Hint: pass --point ID, a batching knob or an --autopilot-* flag")
    out = dict(base or {})
    out.setdefault("autopilot", None)
    out.update(changed_knobs)
    if autopilot == "off":
        out["autopilot"] = None
    elif autopilot is not None:
        given = {k: v for k, v in autopilot.items() if v is not None}
        if out["autopilot"] is None and "p95_ms" not in given:
            raise ValueError(
                "the fleet's autopilot is off; Hint: turn it on with --autopilot-p95-ms MS "
                "(--autopilot-min-accuracy and --autopilot-family change a running one)"
            )
        out["autopilot"] = {**(out["autopilot"] or {}), **given}
    if point is not None:
        if out["autopilot"] is not None and autopilot is None:
            raise ValueError(
                "the fleet's autopilot chooses the point; Hint: add --autopilot-off to serve "
                f"{point!r} on every replica"
            )
        out["point"] = point
    return out


def lag(state: FleetState, report: Mapping[str, Any]) -> str | None:
    """Why the replica whose ``GET /config`` answer is ``report`` is not on ``state`` (None: it is)."""
    held = FleetState.from_json(report.get("fleet"))
    if held is None:
        return "holds no fleet state"
    if held.key() != state.key():
        side = "superseded by" if held.key() > state.key() else "still on"
        return f"{side} generation {held.generation} (set by {held.set_by or '?'})"
    config, pilot = state.config, report.get("autopilot")
    if config.get("autopilot") is None:
        if pilot is not None:
            return "its own autopilot is on"
        if "point" in config and report.get("point") != config["point"]:
            return f"serves {report.get('point')!r}, not {config['point']!r} (a PUT /config of its own)"
    elif pilot is None:
        return "its autopilot is off"
    for k in KNOBS:
        if k in config and report.get(k) != config[k]:
            return f"{k} is {report.get(k)!r}, not {config[k]!r}"
    return None


def parse_peers(text: str | None) -> list[tuple[str, int]]:
    """``host:port`` entries, comma-separated (``[v6]:port`` for an IPv6 literal), in order."""
    out = []
    for entry in (text or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        host, sep, port = entry.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]  # an IPv6 literal
        elif ":" in host:
            host = ""
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(
                f"peer {entry[:100]!r} is not host:port; Hint: e.g. skipvit-peers:8000 (a headless "
                "Service: every replica's address) or 127.0.0.1:8001,127.0.0.1:8002"
            )
        out.append((host, int(port)))
    return out
