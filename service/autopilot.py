"""The SLO autopilot's decision: which point of a family to serve so that p95 latency meets a target.

Pure: no I/O, no clock of its own, no model. ``service.pilot`` feeds it what the server measured
and applies what it chose; the tests feed it a simulated queue and simulated costs.

**Costs** (``CostModel``). The engine's time for a batch of ``b`` images at point ``p`` is modelled as
``s_p + a_p * b``: a fixed part per forward (``s_p``) and a part per image (``a_p``), both taken
from a short warm-up measurement (one timing at batch 1 and one at the largest batch per point;
the caller may scale each point's per-image part, as ``service.pilot`` does for the layers a real
image runs).
Each batch the engine then runs is an observation ``(point, b, seconds)``; its ratio to the model
updates a correction factor of that point (an exponentially weighted mean), and a shared factor
of the whole machine. A point never observed takes the shared factor; a point observed before
keeps its own, moved by as much as the shared factor moved since its last observation. So a
machine that slows down (another process, a thermal limit) slows every estimate, not only the
served point's, while what was learned of one point's warm-up error is not lost when the server
leaves it (two points whose warm-up timings erred in opposite ways would otherwise swap order).

**Latency** (``predict_p95``). Requests arrive at ``rate`` images/s and are served in batches of at
most ``B``; a batch closes when it is full or ``max_wait`` after its oldest request, and the next
one gathers the requests that arrive while the engine computes. Batching absorbs load: as the rate
grows, batches grow, until a full batch's time exceeds the time ``B`` images take to arrive
(``rho = rate * T(B) / B >= 1``), where the queue grows without bound and the p95 is infinite.
Below that a batch settles at ``b* = rate * T(b*)`` images (what arrives while one batch computes),
``b* = rate * s / (1 - rate * a)`` for ``T(b) = s + a b``, and no fewer than arrive within
``max_wait``. A request waits for the batch being computed, then for its own, so with ``b95 =
b* + 2 sqrt(b*)`` (the Poisson count's spread, capped at ``B``)::

    p95 = queued / B * T(B) + max_wait + 2 T(b95)

(``queued / B * T(B)``: clearing the images already waiting, as after a step up in load.) Checked
against the simulated server in the tests, the prediction is within about -10% to +60% of the
simulated p95 up to ``rho = 0.95``.

The prediction is then scaled by how the active point's observed p95 compared with its prediction
(``ControllerState.correction``), so a model that is wrong on this machine corrects itself.

**Choice** (``decide``). Among the family's points at or above ``min_accuracy`` (on the validation
split where the bundle records it: a choice, not a report), the most accurate one whose predicted
p95 meets the target. Hysteresis, so that a constant load gives a constant point:

- down at once when the active point is past capacity: the server refuses more than
  ``SHED_TOLERANCE`` of the offered requests (the model times the engine alone; the HTTP work and
  other processes share the CPU), or its prediction passes the target with a backlog queued or no
  measured p95 to doubt it by;
- down once it has lasted ``BREACH_S`` (longer than the server's 2-s window of the observed p95,
  over which one stall's late answers stay, and which a cheaper point would not undo): the
  prediction passes the target (infinite included) while the observed p95 is above
  ``CALM_FRACTION`` (85%) of it (at or below, with no backlog, the measurement outranks the model
  for the point being served), or the observed p95 passes the target while the prediction is above
  ``UP_FRACTION`` of it;
- up only to a point predicted at or below ``UP_FRACTION`` of the target, or *vouched for* at the
  rate offered now, only after ``DWELL_S`` seconds on the active point, and never while the server
  refuses load;
- between the two, stay.

A point is vouched for at every rate up to the highest one at which it was served for a whole
window measuring at or under ``CALM_FRACTION`` of the target, with no backlog, no refusals and no
breach pending (``ControllerState.held``); it counts as meeting the target there whatever the
model predicts. On a shared core the engine's timings carry the HTTP work's share of the CPU,
and a model learned from them can put the top point past its capacity at half of it; what the
point measured is the better witness. Moved down from a rate, a point is vouched for only below
``HELD_MARGIN`` (90%) of it from then on, so a point that could not hold a rate is not gone back to
at it on the strength of an older measurement.

Started from a point outside the family (or below the floor), the first choice is the most
accurate point that meets the target (reason ``start``).

When even the leanest point above the floor cannot meet the target it is chosen anyway (reason
``floor``): leanest by the compute per image the bundle recorded (mean layers, on validation
where recorded), else by the model, the active point then staying where it costs within
``FLOOR_MARGIN`` of the cheapest. The autopilot never goes below ``min_accuracy``; the server's
admission control then sheds what it cannot answer in time (503 + Retry-After).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

UP_FRACTION = 0.7  # move up only to a point predicted at <= 70% of the target
DWELL_S = 2.0  # ... and only after this long on the active point
FLOOR_MARGIN = 0.05  # at the floor, the active point stays while it costs at most 5% more than the cheapest
CALM_FRACTION = 0.85  # a served point measured at <= 85% of the target is not moved down by the model alone
HELD_MARGIN = 0.9  # a point moved down at a rate is vouched for by its measurements only below 90% of it
BREACH_S = 2.5  # a breach that does not call for a move at once must last this long (> the 2-s window)
SHED_TOLERANCE = 0.01  # refusing more than this share of the offered load means: past capacity
SPREAD = 2.0  # b95 = b* + SPREAD * sqrt(b*): the Poisson count's 95th percentile, about
EWMA = 0.2  # weight of one new observation in a correction factor
OUTLIER = 2.0  # one batch's timing counts at most this far from the estimate it updates
CORRECTION_BOUNDS = (0.5, 4.0)  # observed / predicted p95 is trusted within these

REASONS = ("hold", "up", "down", "floor", "start")


@dataclass(frozen=True)
class Target:
    p95_s: float
    min_accuracy: float = 0.0

    def __post_init__(self) -> None:
        if not self.p95_s > 0:
            raise ValueError(f"the p95 target must be > 0 seconds, got {self.p95_s}")
        if not 0.0 <= self.min_accuracy <= 1.0:
            raise ValueError(f"min_accuracy must lie in [0, 1], got {self.min_accuracy}")


@dataclass(frozen=True)
class Candidate:
    id: str
    accuracy: float  # what the choice ranks by (validation accuracy where recorded)
    compute: float | None = None  # recorded compute per image (mean layers): what "leanest" means


@dataclass(frozen=True)
class Load:
    rate: float  # images/s arriving (recent), refused ones included
    queued: int  # images waiting now
    max_batch: int  # images in one forward at most
    max_wait_s: float  # longest a request waits for company
    refused_share: float = 0.0  # of the requests offered recently, the share the server refused


# ---------------------------------------------------------------- costs


@dataclass
class PointCost:
    fixed_s: float  # per forward
    per_image_s: float  # per image
    factor: float = 1.0  # observed / modelled, weighted towards the recent
    observed_at: float | None = None  # when the last observation came (the caller's clock)
    shared_then: float = 1.0  # the shared factor right after that observation


@dataclass
class CostModel:
    """Seconds per batch per point: warm-up model times learned correction factors."""

    points: dict[str, PointCost] = field(default_factory=dict)
    shared: float = 1.0  # the machine's factor: of points never observed, and their drift since

    @staticmethod
    def from_warmup(
        timings: dict[str, tuple[tuple[int, float], tuple[int, float]]],
        per_image_scale: dict[str, float] | None = None,
    ) -> CostModel:
        """``timings[point] = ((b1, seconds1), (b2, seconds2))``, two batch sizes b1 < b2: the line
        through them (per-image cost and fixed part, neither below 0); ``per_image_scale[point]``
        then scales that point's per-image part (real images run more or fewer layers than the
        warm-up's: ``service.pilot``)."""
        points = {}
        for pid, ((b1, t1), (b2, t2)) in timings.items():
            if not 0 < b1 < b2:
                raise ValueError(f"{pid}: warm-up batch sizes must satisfy 0 < b1 < b2, got {b1}, {b2}")
            per_image = max((t2 - t1) / (b2 - b1), 1e-9)
            fixed = max(t1 - per_image * b1, 0.0)
            points[pid] = PointCost(fixed, per_image * (per_image_scale or {}).get(pid, 1.0))
        return CostModel(points)

    def factor(self, point: str) -> float:
        """The correction factor of ``point`` now (module docstring)."""
        c = self.points[point]
        if c.observed_at is None:
            return self.shared
        return c.factor * self.shared / c.shared_then

    def batch_s(self, point: str, images: int) -> float:
        """Modelled seconds for one forward of ``images`` images at ``point``."""
        c = self.points[point]
        return (c.fixed_s + c.per_image_s * images) * self.factor(point)

    def line(self, point: str) -> tuple[float, float]:
        """(fixed s, per-image s) of ``point``'s batch time, with its correction factor."""
        c, f = self.points[point], self.factor(point)
        return c.fixed_s * f, c.per_image_s * f

    def observe(self, point: str, images: int, seconds: float, now: float) -> None:
        """One batch the engine ran: move the point's factor and the shared one towards it."""
        c = self.points.get(point)
        if c is None or images < 1 or not seconds > 0:
            return
        ratio = seconds / max(c.fixed_s + c.per_image_s * images, 1e-12)

        def near(estimate: float) -> float:  # one freak timing (a stall) moves nothing far
            return min(max(ratio, estimate / OUTLIER), estimate * OUTLIER)

        estimate = self.factor(point)  # its own where observed before, with the drift since
        c.factor = near(estimate) if c.observed_at is None else (1 - EWMA) * estimate + EWMA * near(estimate)
        c.observed_at = now
        self.shared = (1 - EWMA) * self.shared + EWMA * near(self.shared)
        c.shared_then = self.shared


# ---------------------------------------------------------------- latency


def predict_p95(fixed_s: float, per_image_s: float, load: Load) -> float:
    """The p95 latency (s) the module docstring's model predicts for a point whose batch of ``b``
    images takes ``fixed_s + per_image_s * b`` seconds."""
    full = max(load.max_batch, 1)
    rate = max(load.rate, 0.0)
    t_full = fixed_s + per_image_s * full
    if rate * t_full / full >= 1.0:
        return math.inf
    settled = rate * fixed_s / (1.0 - rate * per_image_s)  # b* = rate * T(b*)
    b = min(max(settled, rate * load.max_wait_s, 1.0), full)
    b95 = min(b + SPREAD * math.sqrt(b), full)
    backlog = load.queued / full * t_full
    return backlog + load.max_wait_s + 2.0 * (fixed_s + per_image_s * b95)


def predictions(
    candidates: Sequence[Candidate], costs: CostModel, load: Load, correction: float = 1.0
) -> dict[str, float]:
    """Predicted p95 (s) of each candidate under ``load``, scaled by ``correction``."""
    return {c.id: correction * predict_p95(*costs.line(c.id), load) for c in candidates}


# ---------------------------------------------------------------- choice


@dataclass(frozen=True)
class ControllerState:
    point: str  # the point served now
    since: float  # when it became the served point (the caller's clock)
    correction: float = 1.0  # observed / predicted p95 of the served point, weighted to the recent
    breach_since: float | None = None  # since when a breach that waits to last has held (``_over``)
    held: tuple[tuple[str, float], ...] = ()  # (point, the highest rate at which it measured calm)


@dataclass(frozen=True)
class Decision:
    point: str
    reason: str  # one of REASONS
    predicted_p95_s: float  # of the chosen point
    state: ControllerState


def eligible(candidates: Sequence[Candidate], target: Target) -> list[Candidate]:
    """The candidates at or above the floor, most accurate first (ties: the order given)."""
    above = [c for c in candidates if c.accuracy >= target.min_accuracy]
    return sorted(above, key=lambda c: -c.accuracy)


def update_correction(state: ControllerState, predicted: float, observed: float | None) -> ControllerState:
    """Fold one (predicted, observed) p95 pair of the served point into ``state.correction``."""
    if observed is None or not math.isfinite(predicted) or predicted <= 0 or observed <= 0:
        return state
    raw = state.correction * observed / predicted  # what the correction should have been
    low, high = CORRECTION_BOUNDS
    raw = min(max(raw, low), high)
    return replace(state, correction=(1 - EWMA) * state.correction + EWMA * raw)


def _over(
    active: str | None,
    predicted: dict[str, float],
    load: Load,
    target: Target,
    observed_p95_s: float | None,
) -> str | None:
    """Whether the active point must go down (module docstring): ``"now"``, ``"lasting"`` (once the
    breach has lasted ``BREACH_S``), or None."""
    if active is None or load.refused_share > SHED_TOLERANCE:
        return "now"  # no active point of the family, or the server refuses load at it: past capacity
    p, t = predicted[active], target.p95_s
    if p > t and (observed_p95_s is None or load.queued > load.max_batch):
        return "now"  # a backlog to clear, or nothing measured to doubt the model with
    # A breach the model alone predicts does not move down a point whose own measured p95 sits well
    # inside the target: for the active point the measurement is the better witness (the model,
    # learned from engine timings, is what ranks the points not being served). An observed breach
    # counts where the model puts the point near the target too; a lone spike (a pause, a burst)
    # at a load far below it moves nothing but the correction factor, which a lasting breach raises
    # until the prediction passes the target. Either must outlast one window of the observed p95:
    # a stall's late answers stay in the window for that long, and moving down would not undo it.
    calm = observed_p95_s is not None and observed_p95_s <= CALM_FRACTION * t
    seen = observed_p95_s is not None and observed_p95_s > t and p > UP_FRACTION * t
    return "lasting" if (p > t and not calm) or seen else None


def _down(
    ranked: list[Candidate],
    meets: list[Candidate],
    active: str | None,
    costs: CostModel,
    load: Load,
) -> tuple[str, str]:
    """(point, reason) when the active point must go down: the most accurate point below it that
    meets the target and costs less (a costlier one cannot relieve the load); where none does, the
    floor: the leanest point, by the compute the bundle recorded where every candidate has it (one
    measurement on the same images for all, so no noise to absorb), else the cheapest per image at
    full batches by the model (every prediction may be infinite), the active point staying while
    its cost is within FLOOR_MARGIN of that one's, so that the noise in near-equal costs does not
    switch between them every tick."""
    full_batch = {c.id: costs.batch_s(c.id, load.max_batch) for c in ranked}
    if active is not None:
        rank = {c.id: i for i, c in enumerate(ranked)}
        meets = [c for c in meets if rank[c.id] > rank[active] and full_batch[c.id] < full_batch[active]]
    if meets:  # (from a point outside the family, or below the floor: a start)
        return meets[0].id, "down" if active is not None else "start"
    if all(c.compute is not None for c in ranked):
        return min(ranked, key=lambda c: c.compute).id, "floor"
    cheapest = min(ranked, key=lambda c: full_batch[c.id])
    if active is not None and full_batch[active] <= (1 + FLOOR_MARGIN) * full_batch[cheapest.id]:
        return active, "floor"
    return cheapest.id, "floor"


def decide(
    candidates: Sequence[Candidate],
    costs: CostModel,
    load: Load,
    target: Target,
    state: ControllerState,
    now: float,
    observed_p95_s: float | None = None,
) -> Decision:
    """The point to serve next (module docstring). ``observed_p95_s``: the served point's p95 over
    the last window, None where too few requests were answered to tell."""
    ranked = eligible(candidates, target)
    if not ranked:
        raise ValueError(f"no point of the family reaches min_accuracy {target.min_accuracy}; Hint: lower it")
    predicted = predictions(ranked, costs, load, state.correction)
    active = state.point if state.point in predicted else None
    over = _over(active, predicted, load, target, observed_p95_s)
    held = _held(state, active, load, target, observed_p95_s, now, over)
    vouched = {point for point, rate in held.items() if load.rate <= rate}
    meets = [c for c in ranked if predicted[c.id] <= target.p95_s or c.id in vouched]
    breach_since = (now if state.breach_since is None else state.breach_since) if over == "lasting" else None
    state = replace(state, breach_since=breach_since, held=tuple(held.items()))

    def to(point: str, reason: str) -> Decision:
        if point == state.point:
            return Decision(point, reason, predicted[point], state)
        if reason in ("down", "floor") and active in held:  # could not hold this rate: not vouched for at it
            held[active] = min(held[active], HELD_MARGIN * load.rate)
        moved = replace(state, point=point, since=now, breach_since=None, held=tuple(held.items()))
        return Decision(point, reason, predicted[point], moved)

    if over == "now" or (over == "lasting" and now - state.breach_since >= BREACH_S):
        return to(*_down(ranked, meets, active, costs, load))
    accuracy = next(c.accuracy for c in ranked if c.id == active)
    if now - state.since >= DWELL_S and load.refused_share <= SHED_TOLERANCE:
        low = UP_FRACTION * target.p95_s
        up = [c for c in meets if c.accuracy > accuracy and (predicted[c.id] <= low or c.id in vouched)]
        if up:
            return to(up[0].id, "up")
    return to(active, "hold")


def _held(
    state: ControllerState,
    active: str | None,
    load: Load,
    target: Target,
    observed_p95_s: float | None,
    now: float,
    over: str | None,
) -> dict[str, float]:
    """``state.held``, with the active point's rate where it measures calm now: at or under
    ``CALM_FRACTION`` of the target, over a whole window at it, with nothing backed up or refused
    and no breach pending (``over`` None: so an active point, and no refusals past the tolerance).
    Such a point is vouched for at any rate up to that one, whatever the model predicts (module
    docstring)."""
    held = dict(state.held)
    calm = (
        over is None
        and observed_p95_s is not None
        and observed_p95_s <= CALM_FRACTION * target.p95_s
        and load.queued <= load.max_batch
        and now - state.since >= DWELL_S
    )
    if calm and load.rate > held.get(active, 0.0):
        held[active] = load.rate
    return held
