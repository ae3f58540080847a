"""A simulated batching server for the autopilot's controller: Poisson arrivals of one-image
requests, one queue, batches of at most B closed when full or ``max_wait`` after their oldest
request, an engine whose true time per batch is ``fixed + per_image * b`` per point (times a seeded
noise, and paused now and then where ``stalls`` says), and the controller asked every ``tick`` seconds with what the server would measure."""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field

from skipvit.service.autopilot import Candidate, ControllerState, CostModel, Load, Target, decide


@dataclass
class Sim:
    candidates: list[Candidate]
    true_cost: dict[str, tuple[float, float]]  # point -> (fixed s, per-image s)
    target: Target
    max_batch: int = 32
    max_wait_s: float = 0.005
    tick_s: float = 0.25
    window_s: float = 2.0
    noise: float = 0.05
    warmup_error: float = 1.0  # the warm-up measured every cost times this
    stalls: tuple[float, float] | None = None  # (every s, lasting s): the engine pauses (another process)
    seed: int = 0
    chosen: list[tuple[float, str, str]] = field(default_factory=list)  # (time, point, reason) per tick
    latencies: list[tuple[float, float, str]] = field(default_factory=list)  # (done at, latency, point)

    def run(self, rates: list[tuple[float, float]], start_point: str | None = None) -> None:
        """``rates``: (duration s, images/s) steps, one after another."""
        rng = random.Random(self.seed)
        timings = {
            p: (
                (1, self.warmup_error * (f + a)),
                (self.max_batch, self.warmup_error * (f + a * self.max_batch)),
            )
            for p, (f, a) in self.true_cost.items()
        }
        costs = CostModel.from_warmup(timings)
        state = ControllerState(start_point or self.candidates[0].id, since=0.0)
        queue: deque[float] = deque()
        arrivals: deque[float] = deque()
        done: deque[tuple[float, float]] = deque()
        t, busy_until, next_tick = 0.0, 0.0, 0.0
        end = sum(d for d, _ in rates)
        edges = []
        acc = 0.0
        for d, r in rates:
            edges.append((acc, acc + d, r))
            acc += d

        def rate_at(x: float) -> float:
            return next((r for a, b, r in edges if a <= x < b), 0.0)

        next_arrival = rng.expovariate(rate_at(0.0)) if rate_at(0.0) > 0 else self.tick_s
        while t < end:
            # the next event: an arrival, a tick, or the engine finishing / a batch falling due
            due = queue[0] + self.max_wait_s if queue else math.inf
            start_at = max(t, busy_until, min(due, busy_until if len(queue) >= self.max_batch else due))
            t = min(next_arrival, next_tick, start_at if queue else math.inf)
            if t >= end:
                break
            if t == next_arrival:
                queue.append(t)
                arrivals.append(t)
                r = rate_at(t)
                next_arrival = t + (rng.expovariate(r) if r > 0 else self.tick_s)
            elif t == next_tick:
                while arrivals and arrivals[0] < t - self.window_s:
                    arrivals.popleft()
                while done and done[0][0] < t - self.window_s:
                    done.popleft()
                lat = sorted(x for _, x in done)
                observed = lat[int(0.95 * (len(lat) - 1))] if len(lat) >= 20 else None
                load = Load(
                    len(arrivals) / min(self.window_s, max(t, self.tick_s)),
                    len(queue),
                    self.max_batch,
                    self.max_wait_s,
                )
                d = decide(self.candidates, costs, load, self.target, state, t, observed)
                state = d.state
                self.chosen.append((t, d.point, d.reason))
                next_tick = t + self.tick_s
            else:  # a batch starts now
                b = min(len(queue), self.max_batch)
                f, a = self.true_cost[state.point]
                took = (f + a * b) * (1 + self.noise * (2 * rng.random() - 1)) + self.stalled(t)
                finish = t + took
                for _ in range(b):
                    arrived = queue.popleft()
                    done.append((finish, finish - arrived))
                    self.latencies.append((finish, finish - arrived, state.point))
                costs.observe(state.point, b, took, finish)
                busy_until = finish

    def stalled(self, t: float) -> float:
        """What is left at ``t`` of a stall that a batch starting then waits out."""
        if self.stalls is None:
            return 0.0
        every, lasting = self.stalls
        return max(0.0, math.floor(t / every) * every + lasting - t)

    def points_between(self, a: float, b: float) -> list[str]:
        return [p for t, p, _ in self.chosen if a <= t < b]

    def p95_between(self, a: float, b: float) -> float:
        lat = sorted(x for t, x, _ in self.latencies if a <= t < b)
        return lat[int(0.95 * (len(lat) - 1))]
