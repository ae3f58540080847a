"""``LoopLag``: how late the event loop runs what is due.

A request's bytes can wait in its socket before the loop reads them, and no queue of the server's
shows that wait; the loop's lag does (``skipvit_event_loop_lag_seconds``). It is a gauge, not an
admission rule: refusing on lag was measured (`skipvit bench overload`) to refuse the work the
engine needed while the refusals themselves kept the loop late.

A timer callback (no task) every ``period`` seconds measures how late it ran; ``lag`` jumps to a
new high at once and decays by ``DECAY`` per tick (about 90% gone after 0.1 s at the default
period), so one late tick does not refuse requests for long.
"""

from __future__ import annotations

import asyncio

PERIOD_S = 0.005
DECAY = 0.9


class LoopLag:
    def __init__(self, period_s: float = PERIOD_S) -> None:
        self.period_s = period_s
        self.lag = 0.0  # seconds, decaying maximum of how late the ticks ran
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._schedule(self._loop.time())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def observe(self, late: float) -> None:
        self.lag = max(late, self.lag * DECAY)

    def _schedule(self, now: float) -> None:
        assert self._loop is not None
        self._due = now + self.period_s
        self._handle = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self.observe(max(0.0, now - self._due))
        self._schedule(now)
