"""`skipvit bench server`: the batched server against a naive endpoint and the model itself.

One run, one machine, every figure measured in it: the real server (`skipvit serve`, dynamic
batching) and the naive endpoint (`benchmarks.naive_server`, one request at a time) each run as a
subprocess on a free loopback port, and each level of closed-loop load (`benchmarks.loadgen`)
runs against one and then the other, so that the figures compared sit seconds apart. The reference
level (64 clients) runs ``--rounds`` times; in each round the batched server's window is followed
at once by the same engine timed in this process at the batch size the server reached (both
servers idle), then by the naive endpoint's window. The verdict (the median
round of each ratio) and the tables are in `benchmarks.server_report`.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from skipvit import flags
from skipvit.benchmarks.loadgen import (
    check_loopback_url,
    http_get,
    request_pool,
    run_async,
    run_level,
    summarize,
)
from skipvit.benchmarks.server_report import (
    machine_info,
    reference_level,
    render_markdown,
    verdict,
    write_report,
)

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
DEFAULT_MAX_BATCH_SIZE = 32  # the server's documented default, if its Settings do not say


# ---- inputs


def fashion_mnist_pngs(data_dir: str | None, n: int) -> list[bytes]:
    """The first ``n`` Fashion-MNIST test images as PNG files: what a client would upload."""
    from PIL import Image

    from skipvit.training.data.fashion_mnist import DEFAULT_DIR, FILES, read_idx

    root = Path(data_dir) if data_dir else DEFAULT_DIR
    path = root / FILES["test"][0]
    if not path.is_file():
        raise FileNotFoundError(
            f"Fashion-MNIST test images not found at {path}. Hint: `apt-get install "
            f"dataset-fashion-mnist` puts them in {DEFAULT_DIR}, or pass --data-dir"
        )
    pngs = []
    for arr in read_idx(path)[:n]:  # (28, 28) uint8
        buf = io.BytesIO()
        Image.fromarray(arr, mode="L").save(buf, format="PNG")
        pngs.append(buf.getvalue())
    return pngs


def resolve_point(bundle: Path, point: str | None) -> str:
    """``point``, or the bundle's default, checked against its front before any server starts."""
    meta = json.loads((bundle / "bundle.json").read_text())
    known = [p["id"] for p in meta.get("front", [])]
    pid = point or meta["default_point"]
    if pid not in known:
        raise ValueError(f"no point {pid!r} in {bundle}; Hint: pick one of {', '.join(known)}")
    return pid


def server_default(name: str, fallback: int | float) -> int | float:
    """A batching knob as the server process will see it: SKIPVIT_* env, else its Settings default."""
    env = os.environ.get(f"SKIPVIT_{name.upper()}")
    if env:
        return type(fallback)(env)
    try:
        from skipvit.service.settings import Settings

        field = Settings.model_fields.get(name)
        return field.default if field is not None and field.default is not None else fallback
    except ImportError:
        return fallback


# ---- server processes


class ServerProcess:
    """A server subprocess on a loopback port: started, awaited on /readyz, stopped by SIGTERM."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        env: dict[str, str],
        port: int,
        log: Path,
        cpus: list[int] | None = None,
    ) -> None:
        self.name, self.cmd, self.env, self.port, self.log = name, cmd, env, port, log
        self.cpus = cpus  # pinned to these CPUs (taskset): its engine processes inherit them
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        cmd = self.cmd
        if self.cpus is not None:
            # pinned before it runs, not after it starts: the server sizes its engines by the CPUs
            # it may use, as it starts
            cmd = ["taskset", "-c", ",".join(map(str, self.cpus)), *cmd]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, env=self.env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)

    async def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise SystemExit(f"the {self.name} server exited before it was ready:\n{self.log_tail()}")
            try:
                if (await http_get(HOST, self.port, "/readyz", timeout_s=2)).status == 200:
                    return
            except (OSError, TimeoutError, asyncio.IncompleteReadError):
                pass
            await asyncio.sleep(0.2)
        raise SystemExit(
            f"the {self.name} server was not ready after {timeout_s:.0f} s; Hint: raise --start-timeout "
            f"or read {self.log}:\n{self.log_tail()}"
        )

    def stop(self, grace_s: float = 15.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# ---- metrics


def histogram_sum_count(text: str, name: str) -> tuple[float, float] | None:
    """``name``'s _sum and _count from Prometheus text, summed over label sets; None if absent."""
    totals = {"_sum": 0.0, "_count": 0.0}
    seen = set()
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        metric, _, value = line.rpartition(" ")
        suffix = metric[len(name) :].split("{", 1)[0]
        if suffix in totals:
            try:
                totals[suffix] += float(value)
                seen.add(suffix)
            except ValueError:
                pass
    return (totals["_sum"], totals["_count"]) if seen == set(totals) else None


def batch_probe(host: str, port: int, prefix: str = ""):
    """Reads skipvit_batch_size's (sum, count) from /metrics; None where the server has none."""

    async def probe() -> tuple[float, float] | None:
        try:
            resp = await http_get(host, port, f"{prefix}/metrics", timeout_s=5)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            return None
        if resp.status != 200:
            return None
        return histogram_sum_count(resp.body.decode("utf-8", "replace"), "skipvit_batch_size")

    return probe


def process_tree_cpu(pid: int) -> tuple[float, float] | None:
    """CPU seconds (user + system) of process ``pid`` itself and of all its descendants, from
    /proc (Linux); None where that cannot be read."""

    def own(p: int) -> float:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def children(p: int) -> list[int]:
        kids = []
        for f in Path(f"/proc/{p}/task").glob("*/children"):
            kids += [int(x) for x in f.read_text().split()]
        return kids

    try:
        main, rest, todo = own(pid), 0.0, children(pid)
        while todo:
            k = todo.pop()
            try:
                rest += own(k)
                todo += children(k)
            except (FileNotFoundError, ProcessLookupError):  # exited meanwhile
                pass
        return main, rest
    except (OSError, ValueError, IndexError):
        return None


def level_probe(batch, pid: int | None):
    """At the window's start and end: the batch-size histogram (if ``batch``) and the server's CPU."""

    async def probe() -> dict:
        return {"batch": await batch() if batch else None, "cpu": process_tree_cpu(pid) if pid else None}

    return probe


def cpu_ms_per_request(probes: tuple[Any, Any], answered: int) -> dict | None:
    """The server's CPU over the window per answered request: its own process ("process") and its
    children ("children": the engine process of `skipvit serve`)."""
    before, after = (p["cpu"] if p else None for p in probes)
    if before is None or after is None or answered <= 0:
        return None
    return {
        "process": 1000 * (after[0] - before[0]) / answered,
        "children": 1000 * (after[1] - before[1]) / answered,
    }


def mean_batch(probes: tuple[Any, Any]) -> float | None:
    before, after = probes
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


# ---- load levels


async def measure_level(
    name: str,
    host: str,
    port: int,
    prefix: str,
    pool: list[bytes],
    c: int,
    args,
    deadline: float,
    pid: int | None = None,
) -> dict:
    """One concurrency level against one server; the batched server's row gets its mean batch size,
    and both the server's CPU per request when its process is known (``pid``)."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise SystemExit(
            f"the overall --timeout of {args.timeout:.0f} s ran out before {name} at {c} clients"
        )
    res = await asyncio.wait_for(
        run_level(
            host,
            port,
            pool,
            images_per_request=args.images_per_request,
            concurrency=c,
            duration_s=None if args.requests else args.duration,
            max_requests=args.requests,
            warmup_s=args.warmup,
            request_timeout_s=args.request_timeout,
            probe=level_probe(batch_probe(host, port, prefix) if name == "batched" else None, pid),
        ),
        timeout=left,
    )
    batches = tuple(p["batch"] if p else None for p in res.probes)
    row = {
        "server": name,
        **summarize(res),
        "mean_batch_size": mean_batch(batches),
        "server_cpu_ms_per_request": cpu_ms_per_request(res.probes, res.ok + res.failed),
    }
    print(
        f"  {name:8s} c={c:<4d} {row['images_per_s']:8.1f} images/s  p95 {row['latency_ms']['p95']:8.1f} ms"
        f"  failed {row['failed']}",
        file=sys.stderr,
        flush=True,
    )
    return row


def _targets(args, bundle: Path, log_dir: Path) -> list[tuple[str, ServerProcess | None, str, int, str]]:
    """(name, process or None for --url, host, port, path prefix) of the batched and naive servers."""
    py, env = sys.executable, {"SKIPVIT_LOG_LEVEL": "warning", **os.environ}
    knobs = {"SKIPVIT_MAX_BATCH_SIZE": args.max_batch_size, "SKIPVIT_MAX_WAIT_MS": args.max_wait_ms}
    batched_env = {
        **env,
        "SKIPVIT_DEVICE": args.device,
        **{k: str(v) for k, v in knobs.items() if v is not None},
    }
    out = []
    if args.url:
        host, port, prefix = check_loopback_url(args.url)
        out.append(("batched", None, host, port, prefix))
    else:
        port = free_port()
        cmd = [py, "-m", "skipvit", "serve", "--bundle", str(bundle), "--host", HOST, "--port", str(port)]
        out.append(
            (
                "batched",
                ServerProcess("batched", cmd, batched_env, port, log_dir / "server-batched.log"),
                HOST,
                port,
                "",
            )
        )
    port = free_port()
    cmd = [
        py,
        "-m",
        "skipvit.benchmarks.naive_server",
        "--bundle",
        str(bundle),
        "--port",
        str(port),
        "--device",
        args.device,
    ]
    out.append(
        ("naive", ServerProcess("naive", cmd, env, port, log_dir / "server-naive.log"), HOST, port, "")
    )
    return out


async def measure_all(
    args, bundle: Path, pngs: list[bytes], log_dir: Path, inproc=None
) -> dict[str, list[dict]]:
    """Start both servers, then run each level against one and then the other, so that the two
    figures compared at a level are taken a few seconds apart (this machine's speed drifts
    over minutes). An idle server waits on its sockets and costs the other nothing.

    The reference level runs ``args.rounds`` times; in each round, right after the batched server's
    window (before the naive one), ``inproc(mean batch, round, clients)`` (if given) times the engine
    in this process at that round's mean batch size, so that the two figures of that ratio are
    seconds apart."""
    deadline = time.monotonic() + args.timeout
    targets = _targets(args, bundle, log_dir)
    servers: dict[str, list[dict]] = {name: [] for name, *_ in targets}
    ref_c = reference_level(args.concurrency)
    try:
        for name, proc, host, port, prefix in targets:
            if proc is not None:
                print(f"starting the {name} server on port {port} ...", file=sys.stderr, flush=True)
                proc.start()
                await proc.wait_ready(args.start_timeout)
            elif (await http_get(host, port, f"{prefix}/readyz")).status != 200:
                raise SystemExit(f"{args.url}/readyz is not 200; Hint: wait until the server has loaded")
        for c in args.concurrency:
            rounds = args.rounds if c == ref_c else 1
            for rnd in range(1, rounds + 1):
                for name, proc, host, port, prefix in targets:
                    pool = request_pool(
                        host, port, f"{prefix}/classify?point={args.point}", pngs, args.images_per_request
                    )
                    pid = proc.proc.pid if proc is not None and proc.proc is not None else None
                    row = await measure_level(name, host, port, prefix, pool, c, args, deadline, pid)
                    servers[name].append(row if rounds == 1 else {**row, "round": rnd})
                    if name == "batched" and c == ref_c and inproc is not None:
                        inproc(row["mean_batch_size"], rnd if rounds > 1 else None, c)
    finally:
        for _, proc, *_ in targets:
            if proc is not None:
                proc.stop()
    return servers


# ---- in-process reference


def timing_batches(images, batch_size: int) -> list:
    """Up to 64 distinct batches of ``batch_size`` of ``images`` (N, C, H, W), or one made by
    repeating them where there are fewer images than one batch."""
    import torch

    n = images.shape[0]
    starts = range(0, max(1, n - batch_size + 1), batch_size)
    batches = [images[s : s + batch_size] for s in starts][:64] or [images[:batch_size]]
    if batches[0].shape[0] < batch_size:  # fewer images than one batch: repeat them
        batches = [torch.cat([images] * math.ceil(batch_size / n))[:batch_size]]
    return batches


def throughput(batch_size: int, calls: int, elapsed: float, cpu_s: float) -> dict:
    """The row of an in-process measurement: ``calls`` batches of ``batch_size`` in ``elapsed``
    seconds of wall time and ``cpu_s`` of CPU time."""
    return {
        "batch_size": batch_size,
        "calls": calls,
        "seconds": round(elapsed, 3),
        "images_per_s": calls * batch_size / elapsed,
        "cpu_ms_per_image": 1000 * cpu_s / (calls * batch_size),
    }


def inprocess_images_per_s(engine, images, batch_size: int, point: str, seconds: float) -> dict:
    """engine.predict on ``batch_size`` real images at a time, as fast as it goes: the ceiling."""
    batches = timing_batches(images, batch_size)
    for b in batches[:3]:
        engine.predict(b, point)
    done, t0, cpu0 = 0, time.perf_counter(), time.process_time()
    while True:
        engine.predict(batches[done % len(batches)], point)
        done += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and done >= 5:
            break
    return throughput(batch_size, done, elapsed, time.process_time() - cpu0)


def engine_processes_images_per_s(
    engine, images, batch_size: int, point: str, seconds: float, depth: int = 2
) -> dict:
    """The server's own engine (``service.worker.EngineProcess``) fed directly, ``depth`` batches in
    flight as the batcher hands them over: its ceiling without HTTP."""
    from concurrent.futures import ThreadPoolExecutor

    batches = timing_batches(images, batch_size)

    def cpu() -> float:
        return sum((process_tree_cpu(p.pid) or (0.0, 0.0))[0] for p in engine.processes)

    with ThreadPoolExecutor(depth) as pool:
        for b in batches[:3]:
            engine.predict(b, point)
        done, t0, cpu0 = 0, time.perf_counter(), cpu()
        flight = [pool.submit(engine.predict, batches[k % len(batches)], point) for k in range(depth)]
        while True:
            flight.pop(0).result()
            done += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds and done >= 5:
                break
            flight.append(pool.submit(engine.predict, batches[(done + depth) % len(batches)], point))
        for f in flight:  # in flight past the window: finished, not counted
            f.result()
        cpu_s = cpu() - cpu0
    return throughput(batch_size, done, elapsed, cpu_s)


def served_layout(args) -> tuple[int, int | None] | None:
    """(engine processes, threads each) of the batched server this command starts, from the same
    SKIPVIT_* settings it reads; None for --url (unknown) or a thread engine."""
    if args.url:
        return None
    from skipvit.service.settings import Settings
    from skipvit.service.worker import layout

    settings = Settings()
    if settings.engine != "process":
        return None
    return layout(args.device, settings.engine_workers, settings.torch_threads)


class InProcess:
    """The ceiling: the same engine, images and point without HTTP. Loaded before the servers
    start, so that the reference level can time it between rounds: ``engine.predict`` in this
    process (torch's threads), and, where the server splits batches across several engine
    processes, those processes fed directly too. A round's reference is the faster of the two."""

    def __init__(self, args, bundle: Path, pngs: list[bytes], max_batch: int) -> None:
        import torch

        from skipvit.service.decode import decode_image
        from skipvit.service.engine import Engine

        self.args, self.max_batch = args, max_batch
        self.seconds = args.inproc_seconds if args.inproc_seconds is not None else args.duration
        self.engine = Engine.from_dir(bundle, args.device)
        channels, size = self.engine.channels, self.engine.image_size
        decoded = [decode_image(p, channels=channels, size=size, max_pixels=1 << 30) for p in pngs]
        self.images = torch.stack(decoded)  # (N, C, H, W)
        self.engine.warm_up()
        self.processes, self.processes_label = None, ""
        shape = served_layout(args)
        if shape is not None and shape[0] > 1:
            from skipvit.service.worker import EngineProcess

            workers, threads = shape
            self.processes = EngineProcess(bundle, args.device, threads=threads, workers=workers)
            self.processes_label = (
                f"the server's: {workers} processes x {threads or 'default'} thread(s), fed directly"
            )
        self.label = f"this process, {torch.get_num_threads()} torch thread(s)"
        self.rows: list[dict] = []

    def close(self) -> None:
        if self.processes is not None:
            self.processes.close()

    def measure(self, batch_size: int, why: str, rnd: int | None = None, reference: bool = False) -> None:
        runs = [(self.label, inprocess_images_per_s, self.engine)]
        if reference and self.processes is not None:
            runs.append((self.processes_label, engine_processes_images_per_s, self.processes))
        for label, timing, engine in runs:
            row = {
                **timing(engine, self.images, batch_size, self.args.point, self.seconds),
                "why": why,
                "engine": label,
            }
            if rnd is not None:
                row["round"] = rnd
            if reference:
                row["reference"] = True
            self.rows.append(row)
            print(
                f"  in-process batch {batch_size:<4d} {row['images_per_s']:8.1f} images/s ({label})",
                file=sys.stderr,
                flush=True,
            )

    def at_reference(self, mean_batch: float | None, rnd: int | None, clients: int) -> None:
        """The ceiling for one round: the engine at the batched server's mean batch size in it, or
        at ``max_batch_size`` where the server reports none."""
        if mean_batch:
            batch, why = max(1, round(mean_batch)), f"the batched server's mean batch at {clients} clients"
        else:
            batch, why = (
                self.max_batch,
                f"max_batch_size (the server's mean batch size at {clients} clients is n/a)",
            )
        self.measure(batch, why, rnd, reference=True)


def add_arguments(p) -> None:
    p.add_argument("--bundle", default="checkpoints/fashion-mnist", help="bundle to serve and time")
    p.add_argument("--point", default=None, help="point id (default: the bundle's default point)")
    p.add_argument(
        "--url",
        default=None,
        help="measure this already running server instead of starting one (loopback only)",
    )
    p.add_argument(
        "--concurrency",
        type=flags.positive_ints,
        default=[1, 8, 32, 64],
        metavar="C1,C2,...",
        help="closed-loop clients per level (default 1,8,32,64)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="runs of the reference level (64 clients), each with an in-process timing; the verdict "
        "reads the median round",
    )
    p.add_argument("--images-per-request", type=int, default=1)
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per level")
    p.add_argument("--requests", type=int, default=None, help="measured requests per level (not --duration)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each level")
    p.add_argument("--request-timeout", type=float, default=30.0, help="seconds until a request fails")
    p.add_argument("--timeout", type=float, default=900.0, help="bound on the whole load phase, in seconds")
    p.add_argument("--start-timeout", type=float, default=120.0, help="seconds a server may take to be ready")
    p.add_argument("--max-batch-size", type=int, default=None, help="SKIPVIT_MAX_BATCH_SIZE for the server")
    p.add_argument("--max-wait-ms", type=float, default=None, help="SKIPVIT_MAX_WAIT_MS for the server")
    p.add_argument(
        "--inproc-seconds",
        type=float,
        default=None,
        help="seconds per in-process timing (default: --duration, as long as a level's window)",
    )
    flags.add_device(p, "cpu", "cpu, cuda or auto (servers and in-process alike)")
    flags.add_data_dir(p, "Fashion-MNIST directory (test images to send)")
    p.add_argument("--out-json", default="runs/bench/server.json")
    p.add_argument("--out-md", default=None, help="also write the markdown table here")


def run(args) -> None:
    bundle = Path(args.bundle).resolve()
    if not (bundle / "bundle.json").is_file():
        raise FileNotFoundError(f"no bundle at {args.bundle}; Hint: pass --bundle checkpoints/fashion-mnist")
    if args.url:
        check_loopback_url(args.url)  # refuse before anything starts
    args.point = resolve_point(bundle, args.point)
    if (
        args.images_per_request < 1
        or args.duration <= 0
        or args.warmup < 0
        or (args.inproc_seconds is not None and args.inproc_seconds <= 0)
    ):
        raise ValueError(
            "--images-per-request, --duration and --inproc-seconds must be positive; "
            "Hint: e.g. --images-per-request 1"
        )
    per_level = args.warmup + (args.duration if not args.requests else 0)
    if args.rounds < 1:
        raise ValueError("--rounds must be >= 1; Hint: e.g. --rounds 3")
    runs = len(args.concurrency) + args.rounds - 1
    if not args.requests and 2 * runs * per_level > args.timeout:
        raise ValueError(
            f"{runs} levels x 2 servers x {per_level:g} s exceed --timeout "
            f"{args.timeout:g} s; Hint: lower --duration or raise --timeout"
        )
    max_batch = args.max_batch_size or int(server_default("max_batch_size", DEFAULT_MAX_BATCH_SIZE))
    max_wait = (
        args.max_wait_ms if args.max_wait_ms is not None else server_default("max_wait_ms", float("nan"))
    )
    pngs = fashion_mnist_pngs(args.data_dir, max(1024, 256 * args.images_per_request))
    out_json = Path(args.out_json)
    inproc = InProcess(args, bundle, pngs, max_batch)
    try:
        servers = run_async(measure_all(args, bundle, pngs, out_json.parent, inproc.at_reference))
        measured = {r["batch_size"] for r in inproc.rows}
        extra = {
            args.images_per_request: "the naive endpoint's batch (one request)",
            max_batch: "max_batch_size",
        }
        for b, why in extra.items():  # once each, servers stopped
            if b not in measured:
                inproc.measure(b, why)
    finally:
        inproc.close()

    settings = {
        "images_per_request": args.images_per_request,
        "duration_s": args.duration,
        "requests": args.requests,
        "warmup_s": args.warmup,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "device": args.device,
        "max_batch_size": max_batch,
        "max_wait_ms": max_wait,
    }
    report = {
        "command": shlex.join(["skipvit", *getattr(args, "argv", [])]),
        "machine": machine_info(),
        "bundle": args.bundle,
        "point": args.point,
        "url": args.url,
        "settings": settings,
        "servers": servers,
        "in_process": inproc.rows,
        "targets": verdict(servers, inproc.rows),
    }
    write_report(report, render_markdown(report), out_json, args.out_md)
