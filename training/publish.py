"""The one way a command writes its result into a bundle.

Every training and search command ends with ``publish``, in this order: drop the earlier points its
result replaces (they were measured on weights or settings that are gone), add its own points, redraw
``front.png``, write its REPORT.md section, refresh the fronts section (a search always; any command
that dropped points, since the table named them), then save ``bundle.json`` and the manifest last.
A dropped default point gives way to ``static``, else to the first point left, so the bundle always
loads. Weight sets are written by the command before it publishes (``Bundle.add_weight_set``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

from skipvit.model.bundle import BUNDLE_JSON, Bundle, Point, load_bundle
from skipvit.training.fronts import update_fronts_section
from skipvit.training.plots import draw_front
from skipvit.training.report import update_section

# The REPORT.md section of a command: (the bundle with its new front, the ids dropped) -> markdown
Body = Callable[[Bundle, list[str]], str]


def publish(
    bundle: Bundle,
    section: str,
    body: Body,
    points: Sequence[Point] = (),
    replaces: Callable[[Point], bool] | None = None,
    fronts: bool = False,
) -> list[str]:
    """Write ``points`` and REPORT section ``section`` into ``bundle`` (loaded afresh by the
    caller: another command may have written into it meanwhile). ``replaces`` picks the earlier
    points that go; ``fronts``: the command is a search, whose result the fronts section sums up.
    Returns the ids of the points dropped and not written again."""
    new = {p.id for p in points}
    gone = {p.id for p in bundle.front if replaces is not None and replaces(p)}
    dropped = [p.id for p in bundle.front if p.id in gone and p.id not in new]
    bundle.front = [p for p in bundle.front if p.id not in gone]
    bundle.upsert_points(list(points))
    ids = [p.id for p in bundle.front]
    if bundle.default_point not in ids:
        bundle.default_point = "static" if "static" in ids else ids[0] if ids else bundle.default_point
    if dropped or points:
        draw_front(bundle)
    update_section(bundle.root, section, body(bundle, dropped))
    if fronts or dropped:
        update_fronts_section(bundle)
    bundle.save()
    return dropped


def numbered(prefix: str) -> Callable[[Point], bool]:
    """The points a search writes as ``<prefix>-1``, ``-2``, ...: not those of another prefix that
    starts the same (``nsga`` leaves ``nsga-joint-3`` and ``nsga-w0.1-2`` alone)."""
    pattern = re.compile(re.escape(prefix) + r"-\d+")
    return lambda p: pattern.fullmatch(p.id) is not None


def holds_bundle(out: Path) -> bool:
    """Whether ``out`` holds a bundle (False: missing or empty); anything else there is refused."""
    if (out / BUNDLE_JSON).is_file():
        return True
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} exists and is not a bundle; Hint: pick an empty --out directory")
    return False


def existing_bundle(out: Path) -> Bundle | None:
    """The bundle at ``out``, or None where ``out`` is missing or empty."""
    return load_bundle(out) if holds_bundle(out) else None
