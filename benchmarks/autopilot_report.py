"""The windows, verdict, table and plot of `skipvit bench autopilot`: pure functions of the
requests' outcomes (no server here), so they are tested with literal data.

An outcome is one request: when it was due (``scheduled``), when its answer came (``done``), the
HTTP status, and for a 200 the point that served it and whether its label was right.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skipvit.benchmarks.server_report import machine_text

SETTLE_S = 2.0  # windows this soon after a step are not judged
P95_WINDOWS = 0.95  # share of judged windows whose p95 must meet the target
GOODPUT_SHARE = 0.97  # answered / offered in a step a point above the floor can carry
CARRY_MARGIN = 0.9  # a step is "carried" by a point if offered <= this x its capacity
NOT_SENT = "not sent"  # the generator had no connection free (its cap): never reached the server


@dataclass(frozen=True)
class Outcome:
    scheduled: float  # seconds since the arm started
    done: float
    status: int | str  # HTTP status, "error" or "unanswered"
    point: str | None = None  # the point that answered (200 only)
    correct: bool | None = None  # the label was right (200 only)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def step_of(t: float, steps: list[dict]) -> int | None:
    """Index of the step ``t`` (seconds since the arm started) falls in."""
    for i, st in enumerate(steps):
        if st["start_s"] <= t < st["start_s"] + st["duration_s"]:
            return i
    return None


def windows(outcomes: list[Outcome], steps: list[dict], window_s: float = 1.0) -> list[dict]:
    """One row per ``window_s`` of the arm: offered (requests due in it), answered (200s that came
    in it), p50/p95 of the 200s due in it, 503s (and their p95: how long even a refusal took,
    the HTTP path's own delay) and other failures due in it, accuracy of its 200s, and the point
    that served most of them."""
    end = max(st["start_s"] + st["duration_s"] for st in steps)
    n = math.ceil(end / window_s)
    due: list[list[Outcome]] = [[] for _ in range(n)]
    came = [0] * n  # 200s that came in each window
    for o in outcomes:
        if 0 <= (w := int(o.scheduled // window_s)) < n:
            due[w].append(o)
        if o.status == 200 and 0 <= (w := int(o.done // window_s)) < n:
            came[w] += 1
    rows = []
    for w in range(n):
        lo = w * window_s
        ok = [o for o in due[w] if o.status == 200]
        lat = [1000 * (o.done - o.scheduled) for o in ok]
        refused = [1000 * (o.done - o.scheduled) for o in due[w] if o.status == 503]
        points = Counter(o.point for o in ok)
        i = step_of(lo, steps)
        rows.append(
            {
                "t": lo,
                "step": i,
                "since_step_s": None if i is None else lo - steps[i]["start_s"],
                "offered": len(due[w]) / window_s,
                "answered": came[w] / window_s,
                "p50_ms": percentile(lat, 50),
                "p95_ms": percentile(lat, 95),
                "refused": len(refused),
                "refused_p95_ms": percentile(refused, 95),
                "failed": sum(1 for o in due[w] if o.status not in (200, 503)),
                "accuracy": sum(bool(o.correct) for o in ok) / len(ok) if ok else math.nan,
                "point": points.most_common(1)[0][0] if points else None,
            }
        )
    return rows


def step_summary(outcomes: list[Outcome], steps: list[dict]) -> list[dict]:
    """Per step, from ``SETTLE_S`` after its start: offered and good answers per second, 503s,
    other failures, accuracy of the 200s, the points that served them."""
    out = []
    for st in steps:
        lo, hi = st["start_s"] + SETTLE_S, st["start_s"] + st["duration_s"]
        due = [o for o in outcomes if lo <= o.scheduled < hi]
        ok = [o for o in due if o.status == 200]
        span = hi - lo
        out.append(
            {
                "multiple": st["multiple"],
                "offered_per_s": len(due) / span,
                "good_per_s": len(ok) / span,
                "refused": sum(1 for o in due if o.status == 503),
                "failed": sum(1 for o in due if o.status not in (200, 503, NOT_SENT)),
                "not_sent": sum(1 for o in due if o.status == NOT_SENT),
                "not_200": dict(Counter(str(o.status) for o in due if o.status != 200)),
                "accuracy": sum(bool(o.correct) for o in ok) / len(ok) if ok else math.nan,
                "p95_ms": percentile([1000 * (o.done - o.scheduled) for o in ok], 95),
                "points": dict(Counter(o.point for o in ok).most_common()),
            }
        )
    return out


def judged_windows(rows: list[dict]) -> list[dict]:
    """The windows the p95 target is judged on: in a step, from ``SETTLE_S`` after its start."""
    return [w for w in rows if w["step"] is not None and w["since_step_s"] >= SETTLE_S]


def verdict(
    on_windows: list[dict],
    on_steps: list[dict],
    steps: list[dict],
    target_ms: float,
    top: str,
    floor_capacity: float,
) -> dict[str, Any]:
    """The targets, judged on the autopilot-on arm (module constants)."""
    judged = judged_windows(on_windows)
    carried = [i for i, st in enumerate(steps) if st["offered_per_s"] <= CARRY_MARGIN * floor_capacity]
    within = [w for w in judged if not math.isnan(w["p95_ms"]) and w["p95_ms"] <= target_ms]
    share = len(within) / len(judged) if judged else math.nan
    goodput = {i: on_steps[i]["good_per_s"] / on_steps[i]["offered_per_s"] for i in carried}
    low = [i for i, st in enumerate(steps) if st["multiple"] <= 0.5]
    top_share = {
        i: on_steps[i]["points"].get(top, 0) / max(1, sum(on_steps[i]["points"].values())) for i in low
    }
    other_failures = sum(s["failed"] for s in on_steps)
    refused_carried = sum(on_steps[i]["refused"] for i in carried)
    return {
        "p95_within_target": {
            "target": f">= {P95_WINDOWS:.0%} of windows from {SETTLE_S:g} s after each step",
            "measured": share,
            "met": share >= P95_WINDOWS,
        },
        "goodput_where_a_point_carries_the_load": {
            "target": f"good answers >= {GOODPUT_SHARE:.0%} of offered in each step at most "
            f"{CARRY_MARGIN:g}x the floor point's capacity",
            "measured": goodput,
            "met": bool(carried) and all(g >= GOODPUT_SHARE for g in goodput.values()),
        },
        "top_point_at_low_load": {
            "target": "the 0.5x steps served at the top point (>= 95% of answers)",
            "measured": top_share,
            "met": bool(low) and all(v >= 0.95 for v in top_share.values()),
        },
        "no_failures_but_shedding": {
            "target": "0 failures other than 503, and no 503 in a step a point carries",
            "measured": {"other_failures": other_failures, "refused_in_carried_steps": refused_carried},
            "met": other_failures == 0 and refused_carried == 0,
        },
    }


def _f(x: float | None, d: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{d}f}"


def _measured(m) -> str:
    """A target's measurement for the reader: shares as percentages, steps by number."""
    if isinstance(m, float):
        return "n/a" if math.isnan(m) else f"{100 * m:.1f}%"
    if isinstance(m, dict):
        return ", ".join(f"{f'step {k}' if str(k).isdigit() else k}: {_measured(v)}" for k, v in m.items())
    return str(m)


def render(report: dict) -> str:
    s = report["settings"]
    lines = [
        f"`{report['command']}`",
        "",
        f"Machine: {machine_text(report)}. Bundle "
        f"`{report['bundle']}`, family of `{s['family']}` ({len(report['family'])} points), target p95 "
        f"{s['p95_ms']:g} ms, floor {s['min_accuracy']:g} (validation accuracy). Capacity (closed loop, "
        f"{s['capacity_clients']} clients): top point `{report['top']}` {_f(report['capacity']['top'], 0)} "
        f"images/s, floor point `{report['floor']}` {_f(report['capacity']['floor'], 0)} images/s. Open-loop "
        f"steps of {s['step_s']:g} s at {', '.join(f'{m:g}x' for m in s['multiples'])} the top point's "
        f"capacity; real Fashion-MNIST test images, accuracy from their labels. Figures per step from "
        f"{SETTLE_S:g} s after its start.",
        "",
        "| step | offered/s | arm | good/s | p95 ms | 503s | other failures | not sent | accuracy | points (answers) |",
        "|---|--:|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    for i, st in enumerate(report["steps"]):
        for arm in ("off", "on"):
            r = report["arms"][arm]["steps"][i]
            pts = ", ".join(f"{p} ({n})" for p, n in list(r["points"].items())[:3])
            lines.append(
                f"| {st['multiple']:g}x | {_f(r['offered_per_s'], 0)} | {arm} | {_f(r['good_per_s'], 0)} | "
                f"{_f(r['p95_ms'])} | {r['refused']} | {r['failed']} | {r.get('not_sent', 0)} | "
                f"{_f(100 * r['accuracy'], 2)}% | {pts} |"
            )
    lines += [
        "",
        "Not sent: due while every connection of the generator (its cap, `--max-connections`) was busy; "
        "they never reached the server and count in no target.",
        "",
        "Targets (autopilot on):",
        "",
    ]
    for name, t in report["targets"].items():
        lines.append(
            f"- {name.replace('_', ' ')} ({t['target']}): **{'met' if t['met'] else 'not met'}** "
            f"({_measured(t['measured'])})"
        )
    over = [w for w in judged_windows(report["arms"]["on"]["windows"]) if not w["p95_ms"] <= s["p95_ms"]]
    if over:
        lines += [
            "",
            "Judged windows over the target (autopilot on): "
            + ", ".join(f"{w['t']:g} s ({_f(w['p95_ms'], 0)} ms, {w['point']})" for w in over)
            + ".",
        ]
    lines += ["", f"![rate, p95 and accuracy per second, both arms]({Path(report['png']).name})"]
    lines += ["", "Per-second windows: in the JSON the command wrote."]
    return "\n".join(lines) + "\n"


def plot_png(report: dict, path: str | Path) -> None:
    """Offered and answered rate, p95 against the target, and the chosen point's accuracy, per
    second, both arms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(11, 8.5), sharex=True)
    colors = {"off": "#888888", "on": "#0b62a4"}
    for arm in ("off", "on"):
        rows = report["arms"][arm]["windows"]
        t = [r["t"] for r in rows]
        label = "autopilot on" if arm == "on" else f"off ({report['top']} fixed)"
        axes[0].plot(t, [r["answered"] for r in rows], color=colors[arm], label=f"answered, {label}")
        axes[1].plot(t, [r["p95_ms"] for r in rows], color=colors[arm], label=label)
        axes[2].plot(t, [100 * r["accuracy"] for r in rows], color=colors[arm], label=label)
    axes[0].plot(
        [r["t"] for r in report["arms"]["on"]["windows"]],
        [r["offered"] for r in report["arms"]["on"]["windows"]],
        color="k",
        ls=":",
        label="offered",
    )
    axes[1].axhline(report["settings"]["p95_ms"], color="green", ls="--", lw=0.8, label="target")
    axes[1].set_yscale("log")
    axes[0].set_ylabel("images/s")
    axes[1].set_ylabel("p95 (ms)")
    axes[2].set_ylabel("accuracy (%)")
    axes[2].set_xlabel("seconds")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"skipvit bench autopilot: {report['bundle']}", fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
