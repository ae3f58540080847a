"""A closed-loop HTTP load generator on raw asyncio streams, for loopback servers only.

Why raw streams and not an HTTP client library: on a 2-core machine the generator shares the CPU
with the server it measures, so every microsecond of client-side Python is charged to the server.
Here a request is one pre-built ``bytes`` object written to a kept-alive connection (one per
virtual client), and a response is a status line, headers and a Content-Length (or chunked) body.

The generator runs on uvloop where it is installed (the server's own dependency): its CPU per
request is then about a tenth of the server's.

Closed loop: each of C clients sends its next request when the previous answer arrives. A level
runs a warm-up, then a measured window; throughput and latency come from the requests that
*complete* inside the window and succeeded (status 200 and the right number of results).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import ipaddress
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

BOUNDARY = "skipvit-bench-7c1f0a"
MAX_HEAD_BYTES = 64 * 1024


class ProtocolError(Exception):
    """The server's bytes are not an HTTP/1.1 response this client understands."""


def run_async(coro):
    """``asyncio.run(coro)`` on uvloop when it is installed: the cheaper loop for the generator."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


@contextlib.contextmanager
def collector_paused():
    """Python's cyclic garbage collector off while the generator sends, and everything alive at
    the start frozen out of its reach.

    Why: the generator keeps every outcome it measures, and its collector's full passes walk them
    all. Measured at 3,700 requests/s: a pass every 4-6 s, growing from 100 to 207 ms in 40 s.
    A generator that stalls sends late, and since latency counts from the scheduled time, its own
    pauses showed as the server's (p95 spikes of 200-400 ms in single seconds). What the
    collector would free meanwhile (cycles) waits until the end. Nested uses are one."""
    if not gc.isenabled():
        yield
        return
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()  # the process as it was: the next use collects first, outside its measure
        gc.enable()


def with_collector_paused(fn):
    """``fn`` (a coroutine function) runs with the collector paused (``collector_paused``)."""

    @functools.wraps(fn)
    async def paused(*args, **kwargs):
        with collector_paused():
            return await fn(*args, **kwargs)

    return paused


# ---- loopback only


def check_loopback_url(url: str) -> tuple[str, int, str]:
    """``http://HOST:PORT[/prefix]`` -> (host, port, prefix); refuses anything not on this machine.

    The generator is loopback-only by design: it is a benchmark of this machine's server, and a
    closed-loop flood aimed elsewhere would be a denial-of-service tool.
    """
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"{url!r}: only plain http:// URLs are supported; Hint: use http://127.0.0.1:PORT")
    host = parts.hostname or ""
    if not _is_loopback(host):
        raise ValueError(
            f"{url!r}: {host or 'the host'} is not a loopback address; the load generator only "
            "targets this machine (127.0.0.0/8, ::1, localhost). Hint: run the benchmark on the "
            "server's machine and pass --url http://127.0.0.1:PORT"
        )
    try:
        port = parts.port or 80
    except ValueError:
        raise ValueError(f"{url!r}: the port is not a number in 1-65535") from None
    return host, port, parts.path.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name other than localhost: it could resolve anywhere
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


# ---- requests


def multipart_body(pngs: Sequence[bytes]) -> bytes:
    """A multipart/form-data body with one ``files`` part per image."""
    parts = []
    for i, png in enumerate(pngs):
        parts.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{i}.png"\r\n'
            "Content-Type: image/png\r\n\r\n".encode()
            + png
            + b"\r\n"
        )
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def classify_request(host: str, port: int, path: str, pngs: Sequence[bytes]) -> bytes:
    """The whole POST, head and body, ready to write as is."""
    body = multipart_body(pngs)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: skipvit-bench\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def request_pool(
    host: str, port: int, path: str, pngs: Sequence[bytes], per_request: int, size: int = 256
) -> list[bytes]:
    """``size`` distinct requests of ``per_request`` images each, cycling through ``pngs``."""
    if not pngs or per_request < 1:
        raise ValueError("need at least one image and one image per request")
    n = min(size, max(1, len(pngs) // per_request))
    return [
        classify_request(
            host, port, path, [pngs[(j * per_request + m) % len(pngs)] for m in range(per_request)]
        )
        for j in range(n)
    ]


# ---- responses


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status line and headers (names lower-cased), without the blank line that ends them."""
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError(f"malformed header line: {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return int(code), headers


async def read_response(reader: asyncio.StreamReader) -> Response:
    """One response from a kept-alive connection; leaves the reader at the next one."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise ProtocolError("response headers too long") from None
    status, headers = parse_head(head[:-4])
    if status in (204, 304) or 100 <= status < 200:
        body = b""
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = await _read_chunked(reader)
    else:
        raise ProtocolError("response has neither Content-Length nor chunked encoding")
    return Response(status, headers, body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, then the blank line
                pass
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)  # the CRLF after each chunk


def check_classify(resp: Response, n_images: int) -> str | None:
    """None if ``resp`` is a good answer to ``n_images`` images, else what was wrong."""
    if resp.status != 200:
        return f"status {resp.status}"
    try:
        results = json.loads(resp.body)["results"]
    except (ValueError, KeyError, TypeError):
        return "body is not the /classify JSON"
    if len(results) != n_images:
        return f"{len(results)} results for {n_images} images"
    return None


class Connection:
    """One kept-alive HTTP/1.1 connection; reopened after an error or ``Connection: close``."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, data: bytes) -> Response:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(
                self.host, self.port, limit=MAX_HEAD_BYTES
            )
        assert self._reader is not None
        self._writer.write(data)
        await self._writer.drain()
        resp = await read_response(self._reader)
        if resp.headers.get("connection", "").lower() == "close":
            self.close()
        return resp

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


async def http_get(host: str, port: int, path: str, timeout_s: float = 5.0) -> Response:
    """A one-off GET on a fresh connection (readiness, metrics)."""
    conn = Connection(host, port)
    data = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
    try:
        return await asyncio.wait_for(conn.request(data), timeout_s)
    finally:
        conn.close()


# ---- one load level


@dataclass
class LevelResult:
    concurrency: int
    images_per_request: int
    elapsed_s: float = 0.0  # length of the measured window
    latencies_ms: list[float] = field(default_factory=list)  # successful requests in the window
    failed: int = 0  # non-200, wrong body, transport error or timeout, in the window
    status_503: int = 0  # of ``failed``: refused because the server's queue was full
    statuses: Counter = field(default_factory=Counter)  # status code (or "error") -> count
    error_samples: list[str] = field(default_factory=list)
    client_cpu_s: float = 0.0  # CPU time this process spent in the window: the generator's cost
    probes: tuple[Any, Any] = (None, None)  # ``probe()`` at the window's start and end

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)


@with_collector_paused
async def run_level(
    host: str,
    port: int,
    requests: Sequence[bytes],
    *,
    images_per_request: int,
    concurrency: int,
    duration_s: float | None = 10.0,
    max_requests: int | None = None,
    warmup_s: float = 1.0,
    request_timeout_s: float = 30.0,
    probe: Callable[[], Awaitable[Any]] | None = None,
) -> LevelResult:
    """Run C closed-loop clients: ``warmup_s`` unmeasured, then a window of ``duration_s`` seconds
    or ``max_requests`` completed requests, whichever is given (both: whichever comes first). The
    generator's collector is paused meanwhile (``collector_paused``)."""
    if duration_s is None and max_requests is None:
        raise ValueError("a level needs --duration or --requests to end")
    res = LevelResult(concurrency, images_per_request)
    clock = time.perf_counter
    in_window = asyncio.Event()
    done = asyncio.Event()
    bounds = [float("inf"), float("inf")]  # window start, end

    async def timer() -> None:
        await asyncio.sleep(warmup_s)
        before = await probe() if probe else None
        bounds[0], cpu0 = clock(), time.process_time()
        in_window.set()
        if duration_s is not None:
            await asyncio.sleep(max(0.0, duration_s - (clock() - bounds[0])))
            if not done.is_set():
                bounds[1] = clock()
                done.set()
        else:
            await done.wait()
        res.client_cpu_s = time.process_time() - cpu0
        res.probes = (before, await probe() if probe else None)

    def record(t0: float, t1: float, error: str | None, status: int | str) -> None:
        if not in_window.is_set() or done.is_set():
            return
        res.statuses[status] += 1
        if error is None:
            res.latencies_ms.append(1000.0 * (t1 - t0))
        else:
            res.failed += 1
            res.status_503 += status == 503
            if len(res.error_samples) < 5:
                res.error_samples.append(error)
        if max_requests is not None and res.ok + res.failed >= max_requests:
            bounds[1] = t1
            done.set()

    async def client(i: int) -> None:
        conn = Connection(host, port)
        k = i
        try:
            while not done.is_set():
                data = requests[k % len(requests)]
                k += concurrency
                t0 = clock()
                try:
                    resp = await asyncio.wait_for(conn.request(data), request_timeout_s)
                    error, status = check_classify(resp, images_per_request), resp.status
                except (OSError, asyncio.IncompleteReadError, ProtocolError, TimeoutError) as e:
                    conn.close()
                    error, status = f"{type(e).__name__}: {e}", "error"
                    await asyncio.sleep(0.01)  # a refused connect must not spin
                record(t0, clock(), error, status)
        finally:
            conn.close()

    timer_task = asyncio.create_task(timer())
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    await timer_task
    res.elapsed_s = bounds[1] - bounds[0]
    return res


# ---- aggregation


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between ranks (numpy's default)."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(res: LevelResult) -> dict[str, Any]:
    """Throughput and latency of one level, as plain numbers for JSON and the table."""
    lat = sorted(res.latencies_ms)
    elapsed = res.elapsed_s if res.elapsed_s > 0 else float("nan")
    latency = {
        "p50": percentile(lat, 50),
        "p95": percentile(lat, 95),
        "p99": percentile(lat, 99),
        "mean": sum(lat) / len(lat) if lat else float("nan"),
        "max": lat[-1] if lat else float("nan"),
    }
    return {
        "concurrency": res.concurrency,
        "images_per_request": res.images_per_request,
        "window_s": round(res.elapsed_s, 3),
        "requests": res.ok,
        "images": res.ok * res.images_per_request,
        "requests_per_s": res.ok / elapsed,
        "images_per_s": res.ok * res.images_per_request / elapsed,
        "latency_ms": latency,
        "failed": res.failed,
        "status_503": res.status_503,
        "client_cpu_cores": res.client_cpu_s / elapsed,  # share of one core the generator used
        "statuses": {str(k): v for k, v in sorted(res.statuses.items(), key=str)},
        "error_samples": res.error_samples,
    }
