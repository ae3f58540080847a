"""`skipvit bench autopilot`: does the SLO autopilot hold a p95 target under a step load?

One run, one server (`skipvit serve` on a free loopback port):

1. the family (the points that share a batch key with ``--family``), the top point (the most
   accurate on validation) and the floor point (the cheapest at or above ``--min-accuracy``), from
   the bundle; the capacity of each of those two, measured closed-loop at that point;
2. two arms, one after the other, each an open-loop step load of ``--multiples`` (default 0.5x, 2x,
   4x, 0.5x) the top point's capacity, ``--step-s`` (20) seconds per step: **off** (the top point
   fixed) and **on** (``PUT /config {"autopilot": ...}``, after its warm-up);
3. every request is a real Fashion-MNIST test image; its answer's label against the image's label
   gives the accuracy, its answer's point the point chosen.

Per second: offered and answered rate, p50/p95 of the 200s, 503s, accuracy and the point that
served most answers; per step (from 2 s after it starts): the same summed. Targets (autopilot on,
``benchmarks.autopilot_report.verdict``): p95 within the target in >= 95% of the windows from 2 s
after each step; good answers >= 97% of offered in every step the floor point can carry; the
0.5x steps served at the top point; no failure but 503s, and no 503 in a step a point carries.

The generator shares the machine's cores with the server.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from skipvit import flags
from skipvit.benchmarks import served
from skipvit.benchmarks.autopilot_report import (
    NOT_SENT,
    Outcome,
    plot_png,
    render,
    step_summary,
    verdict,
    windows,
)
from skipvit.benchmarks.bench_server import HOST, ServerProcess, fashion_mnist_pngs
from skipvit.benchmarks.loadgen import (
    Connection,
    classify_request,
    collector_paused,
    http_get,
    request_pool,
    run_async,
    run_level,
    summarize,
)
from skipvit.benchmarks.openloop import Sent, dispatch


def add_arguments(p) -> None:
    p.add_argument(
        "--family",
        default=None,
        help="a point of the family the autopilot chooses among (default: an RL point of the largest "
        "family of RL and NSGA points, those on one weight set)",
    )
    p.add_argument("--p95-ms", type=float, default=100.0, help="the p95 target (ms)")
    p.add_argument("--min-accuracy", type=float, default=0.80, help="the accuracy floor (validation)")
    p.add_argument(
        "--multiples",
        type=flags.positive_floats,
        default=[0.5, 2.0, 4.0, 0.5],
        metavar="M1,M2,...",
        help="the steps, as multiples of the top point's capacity (default 0.5,2,4,0.5)",
    )
    p.add_argument("--step-s", type=float, default=20.0, help="seconds per step")
    p.add_argument("--capacity-s", type=float, default=8.0, help="measured seconds per capacity")
    p.add_argument("--capacity-clients", type=int, default=64)
    p.add_argument("--request-timeout", type=float, default=10.0, help="SKIPVIT_REQUEST_TIMEOUT_S")
    p.add_argument("--max-connections", type=int, default=4000)
    served.add_common(p, "runs/bench/autopilot.json")
    p.add_argument("--out-png", default=None, help="the plot (default: next to the JSON, .png)")


def largest_gate_family(bundle_dir: Path) -> str:
    """An RL point of the largest family of gate points (one weight set: RL and NSGA points), the
    default ``--family``."""
    from skipvit.model.bundle import load_bundle
    from skipvit.model.points import GATE_METHODS, batch_key

    families: dict = {}
    for p in load_bundle(bundle_dir).front:
        if p.method in GATE_METHODS:
            families.setdefault(batch_key(p), []).append(p)
    if not families:
        raise ValueError(
            f"{bundle_dir} has no RL or NSGA point; Hint: name a point of the family with --family"
        )
    members = max(families.values(), key=len)
    return next((p.id for p in members if p.method == "rl"), members[0].id)


def plan_points(bundle_dir: Path, family: str, p95_ms: float, min_accuracy: float) -> dict:
    """The family, the top point and the floor point, as the server will see them."""
    from skipvit.model.bundle import load_bundle
    from skipvit.service.pilot import pilot_config, point_accuracy, point_layers

    bundle = load_bundle(bundle_dir)
    config = pilot_config(bundle, p95_ms, min_accuracy, family)
    eligible = [bundle.point(p) for p in config.family if point_accuracy(bundle.point(p)) >= min_accuracy]
    top = max(eligible, key=point_accuracy)
    floor = min(
        eligible, key=lambda p: point_layers(p) or p.metrics.get("relative_compute", 0.0)
    )  # as the autopilot's
    return {"family": list(config.family), "top": top.id, "floor": floor.id}


def run(args) -> None:
    bundle = served.bundle_dir(args.bundle)
    if args.step_s <= 2 or args.capacity_s <= 0:
        raise ValueError("--step-s must be > 2 and --capacity-s > 0; Hint: e.g. --step-s 20")
    if args.family is None:
        args.family = largest_gate_family(bundle)
    points = plan_points(bundle, args.family, args.p95_ms, args.min_accuracy)
    pngs, labels = test_images(args.data_dir, 1024)
    served.pin(args)
    server = served.skipvit_server(args, bundle, "autopilot", request_timeout_s=args.request_timeout)
    server.start()
    try:
        measured = run_async(measure(args, server, pngs, labels, points))
    finally:
        code = server.stop()
    report = {
        **served.header(args),
        "settings": {
            "family": args.family,
            "p95_ms": args.p95_ms,
            "min_accuracy": args.min_accuracy,
            "multiples": list(args.multiples),
            "step_s": args.step_s,
            "capacity_s": args.capacity_s,
            "capacity_clients": args.capacity_clients,
            "request_timeout_s": args.request_timeout,
        },
        **points,
        **measured,
        "server_exit_code": code,
    }
    on = report["arms"]["on"]
    report["targets"] = verdict(
        on["windows"], on["steps"], report["steps"], args.p95_ms, points["top"], report["capacity"]["floor"]
    )
    out_png = Path(args.out_png) if args.out_png else Path(args.out_json).with_suffix(".png")
    report["png"] = str(out_png)
    plot_png(report, out_png)
    served.write(report, render(report), args.out_json, args.out_md)


def test_images(data_dir: str | None, n: int) -> tuple[list[bytes], list[int]]:
    from skipvit.training.data.fashion_mnist import DEFAULT_DIR, FILES, read_idx

    root = Path(data_dir) if data_dir else DEFAULT_DIR
    labels = [int(x) for x in read_idx(root / FILES["test"][1])[:n]]
    return fashion_mnist_pngs(data_dir, n), labels


async def put_config(port: int, token: str, body: dict) -> dict:
    data = json.dumps(body).encode()
    req = (
        f"PUT /config HTTP/1.1\r\nHost: {HOST}:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    ).encode() + data
    conn = Connection(HOST, port)
    try:
        resp = await asyncio.wait_for(conn.request(req), 10.0)
    finally:
        conn.close()
    if resp.status != 200:
        raise RuntimeError(f"PUT /config {body} answered {resp.status}: {resp.body[:300]!r}")
    return json.loads(resp.body)


async def capacity_at(args, port: int, pngs: list[bytes], point: str) -> float:
    requests = request_pool(HOST, port, f"/classify?point={point}", pngs, 1)
    level = await run_level(
        HOST,
        port,
        requests,
        images_per_request=1,
        concurrency=args.capacity_clients,
        duration_s=args.capacity_s,
        warmup_s=1.0,
        request_timeout_s=args.request_timeout + 5,
    )
    return summarize(level)["images_per_s"]


async def measure(args, server: ServerProcess, pngs, labels, points: dict) -> dict:
    await server.wait_ready(args.start_timeout)
    port, token = server.port, server.env["SKIPVIT_ADMIN_TOKEN"]
    capacity = {
        "top": await capacity_at(args, port, pngs, points["top"]),
        "floor": await capacity_at(args, port, pngs, points["floor"]),
    }
    print(f"capacity: {json.dumps(capacity)}", file=sys.stderr)
    steps, t = [], 0.0
    for m in args.multiples:
        rate = m * capacity["top"]
        steps.append({"multiple": m, "start_s": t, "duration_s": args.step_s, "offered_per_s": rate})
        t += args.step_s
    requests = [classify_request(HOST, port, "/classify", [png]) for png in pngs]
    arms = {}
    for arm in ("off", "on"):
        await asyncio.sleep(2.0)  # the previous load's queue empties
        await put_config(port, token, {"autopilot": None, "point": points["top"]})
        if arm == "on":
            autopilot = {"p95_ms": args.p95_ms, "min_accuracy": args.min_accuracy, "family": args.family}
            await put_config(port, token, {"autopilot": autopilot})
            await wait_decided(port)
        outcomes = await step_load(
            port, requests, labels, steps, args.request_timeout + 5, args.max_connections
        )
        arms[arm] = {"windows": windows(outcomes, steps), "steps": step_summary(outcomes, steps)}
        print(f"arm {arm}: {json.dumps(arms[arm]['steps'])}", file=sys.stderr)
    await put_config(port, token, {"autopilot": None})
    return {"capacity": capacity, "steps": steps, "arms": arms}


async def wait_decided(port: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = json.loads((await http_get(HOST, port, "/config")).body)
        pilot = body.get("autopilot")
        if pilot and not pilot["warming_up"] and pilot["point"]:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("the autopilot made no decision within its warm-up bound")


async def step_load(
    port: int,
    requests: list[bytes],
    labels: list[int],
    steps: list[dict],
    answer_timeout_s: float,
    max_connections: int,
) -> list[Outcome]:
    """Open loop (``benchmarks.openloop.dispatch``): each step's requests at its rate, request k
    carrying image k mod N; latency from the scheduled time (no coordinated omission). Every
    request ends as one outcome, times in seconds since the arm started. The generator's collector
    is paused for the arm (``loadgen.collector_paused``), and its start waits for that."""
    at: list[float] = []
    for st in steps:
        n = int(st["offered_per_s"] * st["duration_s"])
        at += [st["start_s"] + k / st["offered_per_s"] for k in range(n)]
    outcomes: list[Outcome] = []
    start = 0.0  # set once the collector is paused, before the first request is due

    def record(sent: Sent) -> None:
        t0, t1 = sent.due - start, sent.done - start
        if sent.response is None:
            outcomes.append(Outcome(t0, t1, NOT_SENT if sent.failure == "not sent" else sent.failure))
            return
        point, correct, status = None, None, sent.response.status
        if status == 200:
            try:
                body = json.loads(sent.response.body)
                i = sent.k % len(requests)
                point, correct = body["point"], body["results"][0]["index"] == labels[i]
            except (ValueError, KeyError, IndexError, TypeError):
                status = "error: not the /classify JSON"
        outcomes.append(Outcome(t0, t1, status, point, correct))

    with collector_paused():
        start = time.perf_counter() + 0.05
        await dispatch(
            HOST,
            port,
            [start + a for a in at],
            lambda k: requests[k % len(requests)],
            record,
            answer_timeout_s=answer_timeout_s,
            max_connections=max_connections,
        )
    return outcomes
