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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from skipvit.benchmarks.loadgen import (
    Connection,
    ProtocolError,
    Response,
    check_classify,
    collector_paused,
    percentile,
)


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


@dataclass
class Sent:
    """What became of one scheduled request: its answer, or why there is none."""

    k: int  # its index in the schedule
    due: float  # perf_counter time it was due
    done: float  # when its outcome was known
    response: Response | None  # the answer, if one came
    failure: str | None = None  # "unanswered", "error", or "not sent" (every connection busy at the cap)


@dataclass
class Dispatch:
    """Counts kept over one schedule (``dispatch``)."""

    not_sent: int = 0
    stale_retries: int = 0
    errors: Counter = field(default_factory=Counter)  # transport errors, by kind
    client_cpu_s: float = 0.0  # this process's CPU time while sending


async def dispatch(
    host: str,
    port: int,
    due: Sequence[float],
    request_of: Callable[[int], bytes],
    on_sent: Callable[[Sent], None],
    *,
    answer_timeout_s: float,
    max_connections: int,
) -> Dispatch:
    """Send request ``request_of(k)`` at perf_counter time ``due[k]`` (ascending), each on an idle
    kept-alive connection or a new one up to ``max_connections``; ``on_sent`` hears every request's
    outcome once. Returns when every answer came (at most ``answer_timeout_s`` each). Callers
    pause the generator's collector around it (``loadgen.collector_paused``), before they fix the
    schedule."""
    clock = time.perf_counter
    stats = Dispatch()
    idle: list[Connection] = []
    opened = 0
    pending: set[asyncio.Task] = set()

    async def send(conn: Connection, data: bytes, reused: bool) -> Response:
        """The answer to ``data``; on a kept-alive connection the server had already closed (it
        answered nothing), sent again once on a new one, as HTTP clients do."""
        try:
            return await conn.request(data)
        except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError) as e:
            if not reused or (isinstance(e, asyncio.IncompleteReadError) and e.partial):
                raise
            conn.close()
            stats.stale_retries += 1
            return await conn.request(data)

    async def one(conn: Connection, k: int, reused: bool) -> None:
        nonlocal opened
        try:
            resp = await asyncio.wait_for(send(conn, request_of(k), reused), answer_timeout_s)
            on_sent(Sent(k, due[k], clock(), resp))
            idle.append(conn)
        except TimeoutError:
            conn.close()
            opened -= 1
            on_sent(Sent(k, due[k], clock(), None, "unanswered"))
        except (OSError, asyncio.IncompleteReadError, ProtocolError) as e:
            conn.close()
            opened -= 1
            stats.errors[f"{type(e).__name__}{' on a kept-alive connection' if reused else ''}"] += 1
            on_sent(Sent(k, due[k], clock(), None, "error"))

    cpu0 = time.process_time()
    for k, at in enumerate(due):
        if (delay := at - clock()) > 0:
            await asyncio.sleep(delay)
        if not idle and opened >= max_connections:
            stats.not_sent += 1
            on_sent(Sent(k, at, at, None, "not sent"))
            continue
        if reused := bool(idle):
            conn = idle.pop()
        else:
            conn, opened = Connection(host, port), opened + 1
        task = asyncio.create_task(one(conn, k, reused))
        pending.add(task)
        task.add_done_callback(pending.discard)
    stats.client_cpu_s = time.process_time() - cpu0
    if pending:
        await asyncio.wait(pending)
    for conn in idle:
        conn.close()
    return stats


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
    answer (at most ``answer_timeout_s`` each). The window is the last ``duration_s`` seconds.
    The generator's collector is paused for the level, and its start waits for that."""
    n = int(rate * (warmup_s + duration_s))
    outcomes: list[Outcome] = []

    def record(sent: Sent) -> None:
        if sent.failure == "not sent":
            return
        if sent.response is None:
            outcomes.append(Outcome(sent.due, sent.done, sent.failure or "error", False))
            return
        good = check_classify(sent.response, images_per_request) is None
        outcomes.append(Outcome(sent.due, sent.done, sent.response.status, good))

    with collector_paused():
        start = time.perf_counter() + 0.05
        stats = await dispatch(
            host,
            port,
            [start + k / rate for k in range(n)],
            lambda k: requests[k % len(requests)],
            record,
            answer_timeout_s=answer_timeout_s,
            max_connections=max_connections,
        )
    res = OpenLoopResult(rate, (start + warmup_s, start + warmup_s + duration_s), outcomes)
    res.not_sent, res.stale_retries, res.errors = stats.not_sent, stats.stale_retries, stats.errors
    res.client_cpu_s = stats.client_cpu_s
    return res
