"""An open-loop HTTP load generator on raw asyncio streams, for loopback servers only.

Open loop: requests are sent at a fixed rate whatever the server answers, the way independent
users arrive. (A closed loop, ``benchmarks.loadgen``, slows down with the server and never
overloads it.) Each request goes out at its scheduled time on an idle kept-alive connection, or on
a new one when none is idle, up to ``max_connections``; a request that finds none is counted as
not sent. Latency counts from the scheduled time, so a generator that falls behind shows as
latency rather than hiding it (no coordinated omission).

Every request sent ends as exactly one outcome: an HTTP status, a transport error, or "unanswered"
when nothing came back within ``answer_timeout_s``. A request that finds its kept-alive connection
already closed by the server (its idle timeout), with nothing answered, is sent again once on a
new connection, as HTTP clients do; its latency still counts from its scheduled time.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from skipvit.benchmarks.loadgen import Connection, ProtocolError, check_classify, percentile


@dataclass
class Outcome:
    scheduled: float  # perf_counter time the request was due
    done: float  # when its outcome was known
    status: int | str  # HTTP status, "error" (transport) or "unanswered"
    good: bool  # a 200 with one result per image


@dataclass
class OpenLoopResult:
    rate: float  # requests per second offered
    window: tuple[float, float]  # perf_counter bounds of the measured window
    outcomes: list[Outcome] = field(default_factory=list)
    not_sent: int = 0  # due while every connection was busy and the cap reached
    client_cpu_s: float = 0.0
    errors: Counter = field(default_factory=Counter)  # transport errors, by kind
    stale_retries: int = 0  # requests sent again: their kept-alive connection had been closed

    def summary(self, images_per_request: int, timeout_s: float) -> dict:
        """Goodput counts the good answers that arrived inside the window; latencies are of the
        requests due inside it."""
        lo, hi = self.window
        span = hi - lo
        due = [o for o in self.outcomes if lo <= o.scheduled < hi]
        ok_ms = sorted(1000 * (o.done - o.scheduled) for o in due if o.good)
        refused_ms = sorted(1000 * (o.done - o.scheduled) for o in due if o.status == 503)
        good_in_window = sum(1 for o in self.outcomes if o.good and lo <= o.done < hi)
        statuses = Counter(str(o.status) for o in self.outcomes)
        return {
            "offered_requests_per_s": round(self.rate, 1),
            "window_s": round(span, 3),
            "goodput_images_per_s": good_in_window * images_per_request / span,
            "ok_latency_ms": {"p50": percentile(ok_ms, 50), "p95": percentile(ok_ms, 95), "max": _max(ok_ms)},
            "refused_latency_ms": {
                "p50": percentile(refused_ms, 50),
                "p95": percentile(refused_ms, 95),
                "max": _max(refused_ms),
            },
            "sent": len(self.outcomes),
            "answered": sum(1 for o in self.outcomes if isinstance(o.status, int)),
            "not_sent": self.not_sent,
            "ok_later_than_timeout": sum(1 for ms in ok_ms if ms > 1000 * timeout_s),
            "statuses": dict(sorted(statuses.items())),
            "errors": dict(self.errors),
            "stale_retries": self.stale_retries,
            "client_cpu_cores": self.client_cpu_s / span if span > 0 else float("nan"),
        }


def _max(values: Sequence[float]) -> float:
    return values[-1] if values else float("nan")


async def open_loop(
    host: str,
    port: int,
    requests: Sequence[bytes],
    *,
    images_per_request: int,
    rate: float,
    warmup_s: float,
    duration_s: float,
    answer_timeout_s: float,
    max_connections: int = 1000,
) -> OpenLoopResult:
    """Send ``rate`` requests per second for ``warmup_s + duration_s`` seconds, then wait for every
    answer (at most ``answer_timeout_s`` each). The window is the last ``duration_s`` seconds."""
    clock = time.perf_counter
    start = clock() + 0.05
    res = OpenLoopResult(rate, (start + warmup_s, start + warmup_s + duration_s))
    idle: list[Connection] = []
    opened = 0
    pending: set[asyncio.Task] = set()

    async def send(conn: Connection, data: bytes, reused: bool):
        """The answer to ``data``; on a kept-alive connection the server had already closed (it
        answered nothing), sent again once on a new one, as HTTP clients do."""
        try:
            return await conn.request(data)
        except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError) as e:
            if not reused or (isinstance(e, asyncio.IncompleteReadError) and e.partial):
                raise
            conn.close()
            res.stale_retries += 1
            return await conn.request(data)

    async def one(conn: Connection, k: int, due: float, reused: bool) -> None:
        nonlocal opened
        try:
            resp = await asyncio.wait_for(send(conn, requests[k % len(requests)], reused), answer_timeout_s)
            res.outcomes.append(
                Outcome(due, clock(), resp.status, check_classify(resp, images_per_request) is None)
            )
            idle.append(conn)
        except TimeoutError:
            conn.close()
            opened -= 1
            res.outcomes.append(Outcome(due, clock(), "unanswered", False))
        except (OSError, asyncio.IncompleteReadError, ProtocolError) as e:
            conn.close()
            opened -= 1
            res.errors[f"{type(e).__name__}{' on a kept-alive connection' if reused else ''}"] += 1
            res.outcomes.append(Outcome(due, clock(), "error", False))

    total = int(rate * (warmup_s + duration_s))
    cpu0 = time.process_time()
    for k in range(total):
        due = start + k / rate
        if (delay := due - clock()) > 0:
            await asyncio.sleep(delay)
        if not idle and opened >= max_connections:
            res.not_sent += 1
            continue
        if reused := bool(idle):
            conn = idle.pop()
        else:
            conn, opened = Connection(host, port), opened + 1
        task = asyncio.create_task(one(conn, k, due, reused))
        pending.add(task)
        task.add_done_callback(pending.discard)
    res.client_cpu_s = time.process_time() - cpu0
    if pending:
        await asyncio.wait(pending)
    for conn in idle:
        conn.close()
    return res
