"""The SLO autopilot at work in one server: it measures, asks ``service.autopilot.decide`` four times
a second, and switches the batcher's active point to the answer.

- **Family.** The points that share one batch key (``model.points.batch_key``) with the point the
  operator names (default: the active point when it is turned on), so a switch never splits a
  batch. A family of one point is refused: there would be nothing to choose.
- **Accuracy.** Each point's validation accuracy where the bundle records it (the choice is made on
  validation), else its test accuracy.
- **Measured.** The arrival rate (images offered over the last ``WINDOW_S``: queued, or refused at
  their headers, the latter counted at the mean images per request), the
  images queued now, every batch's compute time (the batcher's ``on_computed`` hook) for the cost
  model, and the latency of each request served at the chosen point (arrival to answer), whose
  95th percentile over the window is the observed p95.
- **Warm-up.** When turned on, it sends, for each point of the family, a request of one blank image
  and one of ``max_batch_size`` blank images through the batcher and times their batches (the
  engine's own time, not the wait): the starting line of the cost model. A blank image takes its
  own path through a point's gates or exits, not a real image's (it can run the same few layers at
  points whose real images run different numbers), so the per-image part of each line is scaled by
  the point's recorded mean layers (validation where recorded) over the layers the blank batch
  ran: the points' order by cost is then the real traffic's, before any of it is served.

Requests that name their point (``?point=``) are left alone and not counted in the observed p95.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from skipvit.model.bundle import Bundle, Point
from skipvit.model.points import batch_key
from skipvit.service.autopilot import (
    UP_FRACTION,
    Candidate,
    ControllerState,
    CostModel,
    Decision,
    Load,
    Target,
    decide,
    eligible,
    update_correction,
)

log = logging.getLogger("skipvit.service")

TICK_S = 0.25  # a decision this often
SHED_AT = 0.8  # admission refuses what it expects to answer past this share of the target (to start)
SHED_AT_MIN = 0.2  # ... and never less
SHED_STEP_S = 1.0  # the share is adjusted this often at most
SHED_HOLD_S = 2.0  # at the floor, shedding goes on this long after the prediction was last past
SHED_AIM = 0.6  # ... lowered while the observed p95 passes this share of the target
SHED_RELAX = 0.45  # ... raised again once it is at or under this share
SHED_RAISE = 0.05  # ... by this much a second
SHED_FILL_MIN = 0.125  # at SHED_AT_MIN, the images let wait are cut instead, to this share of a batch
SHED_FILL_RAISE = 0.0625  # ... and raised by this much a second (before the share of the target is)
WINDOW_S = 2.0  # the arrival rate and the observed p95 are over this much of the recent past
MIN_OBSERVED = 20  # requests answered in the window before their p95 counts
WARMUP_REPEATS = 2  # each (point, batch size) timed this often; the fastest counts


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None or not math.isfinite(seconds) else f"{1000 * seconds:.0f} ms"


def point_accuracy(point: Point) -> float:
    """The accuracy the autopilot ranks ``point`` by: validation where recorded, else test."""
    m = point.metrics
    return float(m.get("val_accuracy", m.get("accuracy", 0.0)))


def point_layers(point: Point) -> float | None:
    """The mean layers a real image runs at ``point``, as recorded: validation where recorded."""
    m = point.metrics
    layers = m.get("val_mean_layers", m.get("mean_layers"))
    return float(layers) if layers is not None else None


def family_of(bundle: Bundle, anchor: str) -> list[Point]:
    """The points whose rows can share a forward with ``anchor``'s (a per-batch point: none)."""
    key = batch_key(bundle.point(anchor))
    if key is None:
        return []
    return [p for p in bundle.front if batch_key(p) == key]


@dataclass(frozen=True)
class PilotConfig:
    target: Target
    family: tuple[str, ...]  # point ids, front order


def pilot_config(bundle: Bundle, p95_ms: float, min_accuracy: float, anchor: str) -> PilotConfig:
    """Check an operator's request (ValueError with a Hint where it cannot work)."""
    target = Target(p95_ms / 1000.0, min_accuracy)
    points = family_of(bundle, anchor)
    if len(points) < 2:
        raise ValueError(
            f"point {anchor!r} shares its batches with no other point, so there is nothing to choose "
            "from; Hint: name a point of a family in 'family' (e.g. an RL or NSGA point: they share "
            "the gates' weights)"
        )
    ranked = eligible([Candidate(p.id, point_accuracy(p)) for p in points], target)
    if not ranked:
        best = max(point_accuracy(p) for p in points)
        raise ValueError(
            f"no point of {anchor!r}'s family reaches min_accuracy {min_accuracy:g} (the best: {best:.4f} "
            "on validation); Hint: lower min_accuracy"
        )
    return PilotConfig(target, tuple(p.id for p in points))


class Pilot:
    """One autopilot run: ``start`` (warm-up, then the loop), ``stop``; ``record`` and ``computed``
    are fed by the server on the event loop."""

    def __init__(
        self,
        config: PilotConfig,
        bundle: Bundle,
        batcher,
        on_switch: Callable[[str], None],
        metrics=None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.batcher = batcher
        self.on_switch = on_switch
        self.metrics = metrics
        self.clock = clock
        self.recorded_layers = {p: point_layers(bundle.point(p)) for p in config.family}
        self.candidates = [
            Candidate(p, point_accuracy(bundle.point(p)), self.recorded_layers[p]) for p in config.family
        ]
        self.probe_layers: dict[str, float] = {}  # mean layers the warm-up's full blank batch ran
        arch = bundle.architecture
        self.blank_shape = (arch.in_channels, arch.image_size, arch.image_size)
        self.costs: CostModel | None = None
        self.state: ControllerState | None = None
        self.last: Decision | None = None
        self.observed_p95_s: float | None = None
        self._arrivals: deque[tuple[float, float]] = deque()  # (time, images) offered: queued or refused
        self._images_per_request = 1.0  # of the queued requests, a moving mean
        self._refusals: deque[float] = deque()  # when requests were refused
        self._latencies: deque[tuple[float, float]] = deque()  # (time answered, seconds) at the chosen point
        self._warmup: dict[tuple[str, int], float] = {}  # (point, images) -> fastest seconds
        self._task: asyncio.Task | None = None
        self._probing = False  # the warm-up is queueing one of its probes
        self.stopped: str | None = None  # why the loop ended on an error (it then decides no more)
        self.shed_at = SHED_AT  # the admission's share of the target (``service.classify``)
        self.shed_fill = 1.0  # ... and the share of a full batch it lets wait (1: no cap of its own)
        self._past_at = -math.inf  # at the floor: when the prediction last passed UP_FRACTION of the target
        self._shed_adjusted = -math.inf
        self._corrected = -math.inf  # when the correction last learned

    # -- fed by the server -------------------------------------------------------------------
    def submitted(self, images: int) -> None:
        """A request queued (the batcher's hook). The warm-up's own probes are not load: counted,
        a full batch per point would read as a burst, and the first decisions would go down."""
        if self._probing:
            return
        self._arrivals.append((self.clock(), images))
        self._images_per_request += 0.05 * (images - self._images_per_request)

    def refused(self) -> None:
        """A request refused at its headers (its images not yet known: counted at the mean)."""
        now = self.clock()
        self._arrivals.append((now, self._images_per_request))
        self._refusals.append(now)

    def record(self, seconds: float, point: str) -> None:
        """A request without ``?point=`` answered after ``seconds`` at ``point``."""
        if self.state is not None and point == self.state.point:
            self._latencies.append((self.clock(), seconds))

    def computed(self, point: str, images: int, seconds: float) -> None:
        """One batch the engine ran (the batcher's hook)."""
        if self.costs is None:
            key = (point, images)
            self._warmup[key] = min(seconds, self._warmup.get(key, math.inf))
        elif point in self.costs.points:
            self.costs.observe(point, images, seconds, self.clock())

    # -- life --------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="skipvit-autopilot")

    def cancel(self) -> None:
        """Stop deciding (at once; the loop's task ends at its next await)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        try:
            await self.warm_up()
            while True:
                self.tick()
                await asyncio.sleep(TICK_S)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the server goes on at the point it has; the log and /config say why
            self.stopped = f"{type(e).__name__}: {e}"
            log.exception("the autopilot stopped")

    async def warm_up(self) -> None:
        """Time one blank image and one full batch per point of the family (module docstring)."""
        full = max(2, self.batcher.knobs.max_batch_size)
        for _ in range(WARMUP_REPEATS):
            for c in self.candidates:
                for n in (1, full):
                    blank = torch.zeros((n, *self.blank_shape), dtype=torch.uint8)
                    with contextlib.suppress(Exception):  # a shed or failed probe leaves a gap, filled below
                        self._probing = True  # submit queues synchronously: its hook sees the flag
                        try:
                            answer = self.batcher.submit(blank, c.id)
                        finally:
                            self._probing = False
                        self._probed(c.id, n, full, await answer)
        timings = {}
        for c in self.candidates:
            one, many = self._warmup.get((c.id, 1)), self._warmup.get((c.id, full))
            if one is not None and many is not None:  # a flat line where noise put many <= one
                timings[c.id] = ((1, one), (full, max(many, one)))
        if not timings:
            raise RuntimeError("the warm-up timed no batch; the autopilot cannot start")
        known = list(timings.values())
        for c in self.candidates:  # a point the warm-up missed takes the mean line of the others
            if c.id not in timings:
                t1 = sum(t[0][1] for t in known) / len(known)
                tb = sum(t[1][1] for t in known) / len(known)
                timings[c.id] = ((1, t1), (full, max(tb, t1 * 1.01)))
        self.costs = CostModel.from_warmup(timings, self._per_image_scale())
        self.state = ControllerState(self.batcher.active, since=self.clock())
        log.info(
            "autopilot: warm-up timed %d points; target p95 %.0f ms",
            len(timings),
            1000 * self.config.target.p95_s,
        )

    def _probed(self, point: str, images: int, full: int, answer) -> None:
        """Note the layers the full warm-up batch ran (where the answer says)."""
        rows = getattr(answer, "rows", None)
        if images == full and rows:
            layers = [getattr(r, "layers_executed", None) for r in rows]
            if all(x is not None for x in layers):
                self.probe_layers[point] = sum(layers) / len(layers)

    def _per_image_scale(self) -> dict[str, float]:
        """Per point: real images' recorded mean layers over the blank batch's (module docstring)."""
        scale = {}
        for point, probed in self.probe_layers.items():
            recorded = self.recorded_layers.get(point)
            if recorded is not None and recorded > 0:
                scale[point] = recorded / max(probed, 0.5)  # a blank batch that ran ~nothing: half a layer
        return scale

    def tick(self) -> Decision | None:
        """One decision from what was measured; switches the active point where it changes."""
        if self.costs is None or self.state is None:
            return None
        now = self.clock()
        while self._arrivals and self._arrivals[0][0] < now - WINDOW_S:
            self._arrivals.popleft()
        while self._latencies and self._latencies[0][0] < now - WINDOW_S:
            self._latencies.popleft()
        while self._refusals and self._refusals[0] < now - WINDOW_S:
            self._refusals.popleft()
        lat = sorted(s for _, s in self._latencies)
        self.observed_p95_s = lat[int(0.95 * (len(lat) - 1))] if len(lat) >= MIN_OBSERVED else None
        k = self.batcher.knobs
        load = Load(
            rate=sum(n for _, n in self._arrivals) / WINDOW_S,
            queued=self.batcher.queued_images,
            max_batch=k.max_batch_size,
            max_wait_s=k.max_wait_ms / 1000.0,
            refused_share=len(self._refusals) / max(1, len(self._arrivals)),
        )
        # the correction learns once per window: each window's requests count once
        if (
            self.last is not None
            and self.last.point == self.state.point
            and now - self._corrected >= WINDOW_S
        ):
            self.state = update_correction(self.state, self.last.predicted_p95_s, self.observed_p95_s)
            self._corrected = now
        decision = decide(
            self.candidates, self.costs, load, self.config.target, self.state, now, self.observed_p95_s
        )
        self._adjust_shedding(decision, now)
        was = self.state.point
        self.state, self.last = decision.state, decision
        self._note_past(decision, now)
        if decision.point != was:  # the old point's latencies and refusals say nothing of the new one's
            self._latencies.clear()
            self._refusals.clear()
            self.on_switch(decision.point)
            log.info(
                "autopilot: %s -> %s (%s; predicted p95 %s, observed %s; %.0f images/s offered, "
                "%.0f%% refused, %d queued)",
                was,
                decision.point,
                decision.reason,
                _ms(decision.predicted_p95_s),
                _ms(self.observed_p95_s),
                load.rate,
                100 * load.refused_share,
                load.queued,
            )
        if self.metrics is not None:
            self.metrics.autopilot_decided(
                decision, self.observed_p95_s, load.rate, self.shed_at * self.config.target.p95_s
            )
        return decision

    @property
    def shedding(self) -> bool:
        """Whether the admission refuses what it expects to answer past ``shed_at`` of the target (or
        what finds ``shed_waiting`` images waiting): only at the floor (above it a cheaper point is
        the answer to more load, not a 503), and only while the floor point is predicted past
        ``UP_FRACTION`` of the target at the offered rate (refused requests included), or was
        within the last ``SHED_HOLD_S``. Once the load falls, refusals would keep the point at the
        floor (they read as past capacity) and go on refusing what it carries; but at the edge of
        the floor's capacity the prediction dips inside for a tick or two, and a quarter of a
        second without shedding there lets in a backlog that is answered past the target."""
        last, target = self.last, self.config.target.p95_s
        if last is None or last.reason != "floor":
            return False
        return last.predicted_p95_s > UP_FRACTION * target or self.clock() - self._past_at <= SHED_HOLD_S

    def _note_past(self, decision: Decision, now: float) -> None:
        """Note when the floor's prediction last passed ``UP_FRACTION`` of the target (forgotten off
        the floor)."""
        if decision.reason != "floor":
            self._past_at = -math.inf
        elif decision.predicted_p95_s > UP_FRACTION * self.config.target.p95_s:
            self._past_at = now

    def _adjust_shedding(self, decision: Decision, now: float) -> None:
        """At the floor (where the admission sheds), its estimate of a request's wait leaves out the
        HTTP work that shares the CPU with the engine, so what it admits can still be answered past
        the target. Once a second, from the p95 of that second's answers (fresher than the
        decision's 2-s window, which still holds the answers admitted before the last cut): past
        ``SHED_AIM`` of the target (aiming below it: a p95 over a short window is noisy), cut the
        share in proportion (at most by half at once), so a step up in load is under control within
        a second or two rather than many. At its lowest share, cut the images it lets wait instead
        (``shed_waiting``): a lower share would put the threshold under one batch's compute, where
        the admission turns into a gate that opens whenever the engine is expected free, and lets
        a burst in; fewer images waiting make smaller batches, each computed sooner. At or under
        ``SHED_RELAX`` of the target, raise them a little, the images first. Both are kept off the
        floor (nothing is shed there, ``shedding``), so the next overload starts from them."""
        if decision.reason != "floor" or now - self._shed_adjusted < SHED_STEP_S:
            return
        recent = sorted(s for t, s in self._latencies if t >= now - SHED_STEP_S)
        if len(recent) < MIN_OBSERVED:
            return
        self._shed_adjusted = now
        observed, target = recent[int(0.95 * (len(recent) - 1))], self.config.target.p95_s
        if observed > SHED_AIM * target:
            cut = max(0.5, SHED_AIM * target / observed)
            if self.shed_at > SHED_AT_MIN:
                self.shed_at = max(SHED_AT_MIN, self.shed_at * cut)
            else:
                self.shed_fill = max(SHED_FILL_MIN, self.shed_fill * cut)
        elif observed <= SHED_RELAX * target:
            if self.shed_fill < 1.0:
                self.shed_fill = min(1.0, self.shed_fill + SHED_FILL_RAISE)
            else:
                self.shed_at = min(SHED_AT, self.shed_at + SHED_RAISE)

    def shed_waiting(self, max_batch: int) -> int | None:
        """The images the admission lets wait (queued, or admitted and not yet queued) while it
        sheds at the floor, or None while ``shed_fill`` sets no cap of its own."""
        return None if self.shed_fill >= 1.0 else max(1, round(self.shed_fill * max_batch))

    def status(self) -> dict:
        """What GET /config shows of the autopilot."""
        t = self.config.target
        last = self.last
        return {
            "p95_ms": 1000 * t.p95_s,
            "min_accuracy": t.min_accuracy,
            "family": list(self.config.family),
            "warming_up": self.costs is None and self.stopped is None,
            "stopped": self.stopped,
            "point": None if last is None else last.point,
            "reason": None if last is None else last.reason,
            "predicted_p95_ms": None
            if last is None or not math.isfinite(last.predicted_p95_s)
            else 1000 * last.predicted_p95_s,
            "observed_p95_ms": None if self.observed_p95_s is None else 1000 * self.observed_p95_s,
            "arrival_rate": sum(n for _, n in self._arrivals) / WINDOW_S,
            "shed_at_ms": 1000 * self.shed_at * t.p95_s,
            "shed_waiting": self.shed_waiting(self.batcher.knobs.max_batch_size)
            if self.batcher is not None
            else None,
            "vouched": {} if self.state is None else dict(self.state.held),
        }
