"""`skipvit bench autopilot`: the per-second windows, the per-step summary and the verdict from
hand-made outcomes, and one short real run against a served tiny bundle."""

from __future__ import annotations

import json
import math
import os

import pytest

from skipvit.benchmarks.autopilot_report import Outcome, render, step_summary, verdict, windows
from skipvit.cli import main
from tests.cli_args import argv

STEPS = [
    {"multiple": 0.5, "start_s": 0.0, "duration_s": 4.0, "offered_per_s": 10.0},
    {"multiple": 4.0, "start_s": 4.0, "duration_s": 4.0, "offered_per_s": 80.0},
]


def outcomes(step2_status=200, slow=False) -> list[Outcome]:
    out = []
    for k in range(40):  # step 1: 10/s, 10 ms each, all at "top", 9 of 10 right
        t = k / 10
        out.append(Outcome(t, t + 0.010, 200, "top", k % 10 != 0))
    for k in range(320):  # step 2: 80/s at "lean"
        t = 4.0 + k / 80
        late = 0.5 if slow and k % 2 else 0.020
        out.append(Outcome(t, t + late, step2_status if k % 4 == 0 else 200, "lean", True))
    return out


def test_windows_and_steps_count_what_was_due_and_answered():
    rows = windows(outcomes(), STEPS)
    assert len(rows) == 8 and [r["step"] for r in rows] == [0] * 4 + [1] * 4
    first = rows[0]
    assert first["offered"] == 10 and first["answered"] == 10 and first["point"] == "top"
    assert first["p50_ms"] == pytest.approx(10) and first["accuracy"] == pytest.approx(0.9)
    assert rows[5]["offered"] == 80 and rows[5]["point"] == "lean"
    steps = step_summary(outcomes(step2_status=503), STEPS)
    assert steps[0]["offered_per_s"] == 10 and steps[0]["points"] == {"top": 20}  # from 2 s after the start
    assert steps[1]["refused"] == 40 and steps[1]["failed"] == 0 and steps[1]["good_per_s"] == 60


def test_the_verdict_reads_each_target():
    good = outcomes()
    rows, steps = windows(good, STEPS), step_summary(good, STEPS)
    v = verdict(rows, steps, STEPS, 100.0, "top", floor_capacity=200.0)
    assert all(t["met"] for t in v.values()), v
    # slow answers in the second step: its windows miss the target
    slow = outcomes(slow=True)
    v = verdict(windows(slow, STEPS), step_summary(slow, STEPS), STEPS, 100.0, "top", 200.0)
    assert not v["p95_within_target"]["met"] and v["p95_within_target"]["measured"] == pytest.approx(0.5)
    # 503s in a step the floor point could carry, and a failure that is not a 503
    shed = outcomes(step2_status=503)
    v = verdict(windows(shed, STEPS), step_summary(shed, STEPS), STEPS, 100.0, "top", 200.0)
    assert not v["no_failures_but_shedding"]["met"] and not v["goodput_where_a_point_carries_the_load"]["met"]
    v = verdict(windows(shed, STEPS), step_summary(shed, STEPS), STEPS, 100.0, "top", floor_capacity=50.0)
    assert v["no_failures_but_shedding"]["met"]  # 80/s is past the floor point's 50: shedding is allowed
    unsent = outcomes(step2_status="not sent")  # the generator's cap: never reached the server
    v = verdict(windows(unsent, STEPS), step_summary(unsent, STEPS), STEPS, 100.0, "top", 50.0)
    assert v["no_failures_but_shedding"]["met"] and step_summary(unsent, STEPS)[1]["not_sent"] == 40
    broken = outcomes(step2_status="error")
    v = verdict(windows(broken, STEPS), step_summary(broken, STEPS), STEPS, 100.0, "top", 50.0)
    assert not v["no_failures_but_shedding"]["met"]
    # the low step served elsewhere than at the top point
    other = [Outcome(o.scheduled, o.done, o.status, "lean", o.correct) for o in good]
    v = verdict(windows(other, STEPS), step_summary(other, STEPS), STEPS, 100.0, "top", 200.0)
    assert not v["top_point_at_low_load"]["met"]
    assert math.isnan(windows([], STEPS)[0]["p95_ms"])


def test_the_report_gives_shares_as_percentages_and_names_the_windows_over_the_target():
    slow = outcomes(slow=True)
    rows, steps = windows(slow, STEPS), step_summary(slow, STEPS)
    arm = {"windows": rows, "steps": steps}
    report = {
        "command": "skipvit bench autopilot",
        "machine": {},
        "bundle": "b",
        "cpus": {},
        "settings": {
            "family": "top",
            "p95_ms": 100.0,
            "min_accuracy": 0.8,
            "capacity_clients": 8,
            "step_s": 4.0,
            "multiples": [0.5, 4.0],
        },
        "family": ["top", "lean"],
        "top": "top",
        "floor": "lean",
        "capacity": {"top": 20.0, "floor": 200.0},
        "steps": STEPS,
        "arms": {"off": arm, "on": arm},
        "targets": verdict(rows, steps, STEPS, 100.0, "top", 200.0),
        "png": "autopilot.png",
    }
    text = render(report)
    assert "**not met** (50.0%)" in text and "(step 0: 100.0%)" in text
    assert "Judged windows over the target (autopilot on): 6 s (500 ms, lean), 7 s (500 ms, lean)." in text


@pytest.mark.slow
def test_a_short_real_run_on_the_tiny_gate_bundle(tiny_gate_bundle, tmp_path):
    out = tmp_path / "autopilot.json"
    cpus = sorted(os.sched_getaffinity(0))
    # with two CPUs or more, the server on the first and the load generator on the last
    pinning = f"--server-cpus {cpus[0]} --loadgen-cpus {cpus[-1]}" if len(cpus) > 1 else ""
    try:
        main(
            argv(
                "bench autopilot --family rl --min-accuracy 0 --p95-ms 500 --multiples 0.5,1.5 --step-s 3 "
                f"--capacity-s 1 --capacity-clients 8 {pinning}",
                bundle=tiny_gate_bundle,
                out_json=out,
                out_md=tmp_path / "autopilot.md",
            )
        )
    finally:
        os.sched_setaffinity(0, cpus)  # the bench pinned this process, the load generator
    report = json.loads(out.read_text())
    if pinning:
        assert report["cpus"] == {"available": len(cpus), "server": str(cpus[0]), "loadgen": str(cpus[-1])}
        assert f"server on CPUs {cpus[0]}, load generator on CPUs {cpus[-1]}" in render(report)
    assert set(report["family"]) == {"rl", "rl-t0.8", "nsga-a"} and report["top"] in report["family"]
    assert report["capacity"]["top"] > 0 and report["capacity"]["floor"] > 0
    for arm in ("off", "on"):
        steps = report["arms"][arm]["steps"]
        assert len(steps) == 2 and all(s["offered_per_s"] > 0 for s in steps)
        assert len(report["arms"][arm]["windows"]) == 6
    assert set(report["arms"]["off"]["steps"][0]["points"]) == {report["top"]}  # off: the top point fixed
    assert set(report["targets"]) == {
        "p95_within_target",
        "goodput_where_a_point_carries_the_load",
        "top_point_at_low_load",
        "no_failures_but_shedding",
    }
    assert (tmp_path / "autopilot.png").is_file() and "| 0.5x |" in render(report)


def test_the_default_family_is_the_largest_one_of_gate_points(tiny_gate_bundle, tiny_bundle, tmp_path):
    import shutil

    from skipvit.benchmarks.bench_autopilot import largest_gate_family
    from skipvit.model.bundle import Point, load_bundle

    assert largest_gate_family(tiny_gate_bundle) == "rl"  # rl, rl-t0.8 and nsga-a share the weights
    # a lone RL point on other weights does not outnumber them
    out = tmp_path / "b"
    shutil.copytree(tiny_gate_bundle, out)
    b = load_bundle(out)
    b.upsert_points([Point("rl-other", "rl", "static", {"thresholds": 0.5}, dict(b.point("rl").metrics))])
    b.save()
    assert largest_gate_family(out) == "rl"
    with pytest.raises(ValueError, match="no RL or NSGA point"):
        largest_gate_family(tiny_bundle)
