"""`skipvit bench overload`: what the server does with more load than it can serve.

One run, one server (`skipvit serve` on a free loopback port): first its capacity, measured with
closed-loop clients (``benchmarks.loadgen``); then open-loop load (``benchmarks.openloop``) at
multiples of that capacity (default 1x, 2x, 3x, 6x). Each level reports goodput (good answers per
second), the latency of the 200s and of the 503s, and requests sent vs answered.

The targets: goodput at 3x at least 85% of capacity (what is refused costs little), 503s answered
within 20 ms at p95 (refused from the headers, before the body is read), every request sent
answered, and no 200 later than the server's request timeout.

The generator shares the machine's cores with the server; its CPU per level is in the report.
Capacity is measured again after the levels: on a shared host the machine's speed can move
within a run, and the report flags a run where the two differ by more than 10%.
"""

from __future__ import annotations

import asyncio
import json
import sys

from skipvit import flags
from skipvit.benchmarks import served
from skipvit.benchmarks.bench_server import HOST, ServerProcess, fashion_mnist_pngs
from skipvit.benchmarks.loadgen import request_pool, run_async, run_level, summarize
from skipvit.benchmarks.openloop import open_loop
from skipvit.benchmarks.server_report import finite, machine_text

GOODPUT_AT_3X = 0.85  # of capacity
REFUSED_P95_MS = 20.0
DRIFT = 0.10  # capacity after the levels vs before, beyond which the run is flagged


def add_arguments(p) -> None:
    p.add_argument(
        "--levels",
        type=flags.positive_floats,
        default=[1.0, 2.0, 3.0, 6.0],
        metavar="M1,M2,...",
        help="offered load as multiples of the measured capacity (default 1,2,3,6)",
    )
    p.add_argument(
        "--capacity-clients", type=int, default=64, help="closed-loop clients that measure capacity"
    )
    p.add_argument(
        "--duration", type=float, default=10.0, help="measured seconds per level (and for capacity)"
    )
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each level")
    p.add_argument(
        "--request-timeout", type=float, default=10.0, help="SKIPVIT_REQUEST_TIMEOUT_S of the server"
    )
    p.add_argument("--max-connections", type=int, default=4000, help="most connections the generator opens")
    served.add_common(p, "runs/bench/overload.json")


def run(args) -> None:
    bundle = served.bundle_dir(args.bundle)
    if args.duration <= 0 or args.warmup < 0 or args.request_timeout <= 0:
        raise ValueError("--duration and --request-timeout must be positive; Hint: e.g. --duration 10")
    pngs = fashion_mnist_pngs(args.data_dir, 1024)
    served.pin(args)
    server = served.skipvit_server(args, bundle, "overload", request_timeout_s=args.request_timeout)
    server.start()
    try:
        capacity, levels = run_async(measure(args, server, pngs))
    finally:
        code = server.stop()
    report = {
        **served.header(args),
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "request_timeout_s": args.request_timeout,
            "capacity_clients": args.capacity_clients,
        },
        "capacity": capacity,
        "levels": levels,
        "server_exit_code": code,
        "targets": verdict(capacity["images_per_s"], levels),
    }
    served.write(report, render(report), args.out_json, args.out_md)


async def measure(args, server: ServerProcess, pngs: list[bytes]) -> tuple[dict, list[dict]]:
    await server.wait_ready(args.start_timeout)
    requests = request_pool(HOST, server.port, "/classify", pngs, 1)
    capacity = await closed_loop_capacity(args, server, requests)
    levels = []
    for multiple in args.levels:
        await asyncio.sleep(1.0)  # the queue of the level before empties
        res = await open_loop(
            HOST,
            server.port,
            requests,
            images_per_request=1,
            rate=multiple * capacity["images_per_s"],
            warmup_s=args.warmup,
            duration_s=args.duration,
            answer_timeout_s=args.request_timeout + 5,
            max_connections=args.max_connections,
        )
        level = res.summary(1, args.request_timeout)
        level["multiple"] = multiple
        level["goodput_of_capacity"] = level["goodput_images_per_s"] / capacity["images_per_s"]
        levels.append(level)
        print(f"{multiple:g}x: {json.dumps(finite(level))}", file=sys.stderr)
    # The same measure once more: a machine whose speed moved during the run (a shared host) shows
    # here, and the ratios above are then not to be trusted.
    await asyncio.sleep(1.0)
    after = await closed_loop_capacity(args, server, requests)
    capacity["after_levels_images_per_s"] = after["images_per_s"]
    return capacity, levels


async def closed_loop_capacity(args, server: ServerProcess, requests: list[bytes]) -> dict:
    closed = await run_level(
        HOST,
        server.port,
        requests,
        images_per_request=1,
        concurrency=args.capacity_clients,
        duration_s=args.duration,
        warmup_s=args.warmup,
        request_timeout_s=args.request_timeout + 5,
    )
    return summarize(closed)


def verdict(capacity: float, levels: list[dict]) -> dict:
    at3 = [lv for lv in levels if lv["multiple"] == 3.0]
    refused = [lv["refused_latency_ms"]["p95"] for lv in levels if lv["statuses"].get("503")]
    return {
        "goodput_at_3x_of_capacity": {
            "target": GOODPUT_AT_3X,
            "measured": at3[0]["goodput_of_capacity"] if at3 else None,
            "met": bool(at3) and at3[0]["goodput_of_capacity"] >= GOODPUT_AT_3X,
        },
        "refused_p95_ms": {
            "target": REFUSED_P95_MS,
            "measured": max(refused) if refused else None,
            "met": all(p <= REFUSED_P95_MS for p in refused),
        },
        "every_request_answered": {"met": all(lv["answered"] == lv["sent"] for lv in levels)},
        "no_200_past_the_timeout": {"met": all(lv["ok_later_than_timeout"] == 0 for lv in levels)},
    }


def drift_note(cap: dict) -> str:
    """A warning when the capacity after the levels is more than ``DRIFT`` away from the one
    before: the machine's speed moved, and the ratios to capacity mean little."""
    moved = cap["after_levels_images_per_s"] / cap["images_per_s"] - 1
    if abs(moved) <= DRIFT:
        return ""
    return f" (**{100 * moved:+.0f}%: the machine's speed moved during the run; rerun before reading the ratios**)"


def render(report: dict) -> str:
    cap = report["capacity"]
    lines = [
        "# `skipvit bench overload`",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {machine_text(report)}  ",
        f"Capacity ({cap['concurrency']} closed-loop clients): **{cap['images_per_s']:.0f} images/s**, "
        f"p95 {cap['latency_ms']['p95']:.0f} ms; measured again after the levels: "
        f"{cap['after_levels_images_per_s']:.0f} images/s{drift_note(cap)}",
        "",
        "| offered | goodput (img/s) | of capacity | 200 p50 / p95 (ms) | 503 p50 / p95 (ms) | sent | answered "
        "| not sent | statuses | generator CPU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for lv in report["levels"]:
        ok, no = lv["ok_latency_ms"], lv["refused_latency_ms"]
        statuses = ", ".join(f"{k}: {v}" for k, v in lv["statuses"].items())
        lines.append(
            f"| {lv['multiple']:g}x ({lv['offered_requests_per_s']:.0f}/s) | {lv['goodput_images_per_s']:.0f} "
            f"| {100 * lv['goodput_of_capacity']:.0f}% | {ok['p50']:.0f} / {ok['p95']:.0f} "
            f"| {no['p50']:.1f} / {no['p95']:.1f} | {lv['sent']} | {lv['answered']} | {lv['not_sent']} "
            f"| {statuses} | {lv['client_cpu_cores']:.2f} |"
        )
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    for name, t in report["targets"].items():
        measured = t.get("measured")
        shown = "" if measured is None else f"{measured:.2f}"
        lines.append(f"| {name} | {shown} | {'yes' if t['met'] else 'no'} |")
    return "\n".join(lines) + "\n"
