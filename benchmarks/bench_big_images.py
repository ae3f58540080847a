"""`skipvit bench big-images`: what clients sending the largest images allowed cost everyone else.

One run, one server (`skipvit serve` on a free loopback port). First a baseline: closed-loop
normal clients (Fashion-MNIST PNGs, default 64) alone. Then the same clients again, beside
clients that each send a maximum-size image (default 8 clients, 4096x4096 RGBA PNG, each at most
2 requests/s). It reports the normal clients' throughput and p95 in both phases, the big images'
statuses and latency, and the server process's resident memory: before, at its peak (sampled every
50 ms and read from the kernel's high-water mark), and a few seconds after the big clients stop.

The targets: the normal clients keep at least 70% of their throughput, the server's peak RSS stays
at most 1 GB, and after the big clients stop it is back near where it was (within 64 MB).

The generator shares the machine's cores with the server; its CPU is in the report.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections import Counter

import numpy as np

from skipvit.benchmarks import served
from skipvit.benchmarks.bench_server import HOST, ServerProcess, fashion_mnist_pngs
from skipvit.benchmarks.loadgen import (
    ProtocolError,
    classify_request,
    percentile,
    request_pool,
    run_async,
    run_level,
    summarize,
)
from skipvit.benchmarks.server_report import machine_text

NORMAL_KEPT = 0.70  # of the baseline's throughput
PEAK_RSS_BYTES = 1 << 30
BACK_WITHIN_BYTES = 64 << 20


def add_arguments(p) -> None:
    p.add_argument("--clients", type=int, default=64, help="closed-loop clients sending normal images")
    p.add_argument("--big-clients", type=int, default=8, help="clients sending maximum-size images")
    p.add_argument("--big-rate", type=float, default=2.0, help="requests/s of each big client (at most)")
    p.add_argument("--big-side", type=int, default=4096, help="side of the big images (the pixel cap's)")
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each phase")
    p.add_argument("--settle", type=float, default=5.0, help="seconds after the big clients stop")
    served.add_common(p, "runs/bench/big_images.json")


def big_png(side: int) -> bytes:
    """A ``side`` x ``side`` RGBA PNG with every channel varying (so nothing decodes as a shortcut),
    smooth enough to stay small on the wire, as an attacker's would."""
    y, x = np.mgrid[0:side, 0:side]
    arr = np.stack([x % 256, y % 256, (x + y) % 256, 128 + (x * y) % 128], -1).astype(np.uint8)
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def rss_bytes(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in bytes."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def run(args) -> None:
    bundle = served.bundle_dir(args.bundle)
    if args.duration <= 0 or args.big_rate <= 0 or args.big_clients < 1 or args.clients < 1:
        raise ValueError("--duration, --big-rate, --clients and --big-clients must be positive")
    pngs = fashion_mnist_pngs(args.data_dir, 1024)
    big = big_png(args.big_side)
    served.pin(args)
    server = served.skipvit_server(args, bundle, "big-images")
    server.start()
    try:
        result = run_async(measure(args, server, pngs, big))
    finally:
        code = server.stop()
    report = {
        **served.header(args),
        "settings": {
            "clients": args.clients,
            "big_clients": args.big_clients,
            "big_rate_per_client": args.big_rate,
            "big_image": f"{args.big_side}x{args.big_side} RGBA PNG, {len(big)} bytes",
            "duration_s": args.duration,
        },
        **result,
        "server_exit_code": code,
    }
    report["targets"] = verdict(report)
    served.write(report, render(report), args.out_json, args.out_md)


async def big_client(host: str, port: int, data: bytes, rate: float, stop: asyncio.Event, out: dict) -> None:
    """Send ``data`` at most ``rate`` times a second, one at a time, each on a fresh connection."""
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(data)
                await writer.drain()
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
                status = int(head.split(b" ", 2)[1])
            finally:
                writer.close()
        except (OSError, asyncio.IncompleteReadError, ProtocolError, TimeoutError, ValueError) as e:
            status = type(e).__name__
        elapsed = time.perf_counter() - t0
        out["statuses"][str(status)] += 1
        out["latencies_ms"].append(1000 * elapsed)
        await asyncio.sleep(max(0.0, 1.0 / rate - elapsed))


async def sample_rss(pid: int, stop: asyncio.Event, samples: list[int]) -> None:
    while not stop.is_set():
        samples.append(rss_bytes(pid)[0])
        await asyncio.sleep(0.05)


async def measure(args, server: ServerProcess, pngs: list[bytes], big: bytes) -> dict:
    await server.wait_ready(args.start_timeout)
    pid = server.proc.pid
    requests = request_pool(HOST, server.port, "/classify", pngs, 1)

    async def normal() -> dict:
        res = await run_level(
            HOST,
            server.port,
            requests,
            images_per_request=1,
            concurrency=args.clients,
            duration_s=args.duration,
            warmup_s=args.warmup,
            request_timeout_s=60,
        )
        return summarize(res)

    baseline = await normal()
    await asyncio.sleep(1.0)
    rss_before, _ = rss_bytes(pid)
    with open(f"/proc/{pid}/clear_refs", "w") as f:  # VmHWM from here on
        f.write("5")
    big_request = classify_request(HOST, server.port, "/classify", [big])
    stop, samples = asyncio.Event(), []
    big_out = {"statuses": Counter(), "latencies_ms": []}
    bigs = [
        asyncio.create_task(big_client(HOST, server.port, big_request, args.big_rate, stop, big_out))
        for _ in range(args.big_clients)
    ]
    sampler = asyncio.create_task(sample_rss(pid, stop, samples))
    contended = await normal()
    stop.set()
    await asyncio.gather(*bigs, sampler)
    _, hwm = rss_bytes(pid)
    await asyncio.sleep(args.settle)
    rss_after, _ = rss_bytes(pid)
    lat = sorted(big_out["latencies_ms"])
    return {
        "baseline": baseline,
        "with_big_images": contended,
        "big_images": {
            "requests": len(lat),
            "statuses": dict(big_out["statuses"]),
            "latency_ms": {"p50": percentile(lat, 50), "p95": percentile(lat, 95)},
        },
        "server_rss_bytes": {
            "before": rss_before,
            "peak_sampled": max(samples, default=0),
            "peak": max(hwm, max(samples, default=0)),
            "after": rss_after,
        },
    }


def verdict(report: dict) -> dict:
    kept = report["with_big_images"]["images_per_s"] / report["baseline"]["images_per_s"]
    rss = report["server_rss_bytes"]
    return {
        "normal_throughput_kept": {"target": NORMAL_KEPT, "measured": kept, "met": kept >= NORMAL_KEPT},
        "peak_rss_bytes": {
            "target": PEAK_RSS_BYTES,
            "measured": rss["peak"],
            "met": rss["peak"] <= PEAK_RSS_BYTES,
        },
        "rss_back_after": {
            "target": f"within {BACK_WITHIN_BYTES >> 20} MB of before",
            "measured": rss["after"] - rss["before"],
            "met": rss["after"] - rss["before"] <= BACK_WITHIN_BYTES,
        },
    }


def render(report: dict) -> str:
    s, b, c = report["settings"], report["baseline"], report["with_big_images"]
    big, rss = report["big_images"], report["server_rss_bytes"]
    mb = lambda n: f"{n / (1 << 20):.0f} MB"  # noqa: E731
    lines = [
        "# `skipvit bench big-images`",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {machine_text(report)}  ",
        f"{s['clients']} normal clients (closed loop); {s['big_clients']} clients sending a {s['big_image']} "
        f"at most {s['big_rate_per_client']:g}/s each",
        "",
        "| phase | normal images/s | normal p95 (ms) | normal statuses | generator CPU |",
        "|---|---|---|---|---|",
    ]
    for name, lv in (("normal clients alone", b), ("with the big images", c)):
        statuses = ", ".join(f"{k}: {v}" for k, v in lv["statuses"].items())
        lines.append(
            f"| {name} | {lv['images_per_s']:.0f} | {lv['latency_ms']['p95']:.0f} | {statuses} "
            f"| {lv['client_cpu_cores']:.2f} |"
        )
    statuses = ", ".join(f"{k}: {v}" for k, v in big["statuses"].items())
    lines += [
        "",
        f"Big images: {big['requests']} requests ({statuses}), p50 {big['latency_ms']['p50']:.0f} ms, "
        f"p95 {big['latency_ms']['p95']:.0f} ms.  ",
        f"Server RSS: {mb(rss['before'])} before, {mb(rss['peak'])} at the peak, {mb(rss['after'])} "
        "after the big clients stopped.",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    t = report["targets"]
    lines += [
        f"| normal throughput kept >= {100 * NORMAL_KEPT:.0f}% | {100 * t['normal_throughput_kept']['measured']:.0f}% "
        f"| {'yes' if t['normal_throughput_kept']['met'] else 'no'} |",
        f"| peak server RSS <= {mb(PEAK_RSS_BYTES)} | {mb(rss['peak'])} | {'yes' if t['peak_rss_bytes']['met'] else 'no'} |",
        f"| RSS back within {mb(BACK_WITHIN_BYTES)} | {t['rss_back_after']['measured'] / (1 << 20):+.0f} MB "
        f"| {'yes' if t['rss_back_after']['met'] else 'no'} |",
    ]
    return "\n".join(lines) + "\n"
