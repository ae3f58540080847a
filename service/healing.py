"""Self-healing of the engine processes: the decisions, pure, in the shape of ``batcher.plan``.

The supervisor in ``service.worker`` looks at every engine process each tick (a tenth of a second,
or sooner when a process exits) and asks these functions what to do; they take what it saw and the
time, and change nothing, so they are tested with literal timestamps and no process.

``verdict``: must this process be replaced, and why? None means leave it be.

- It has exited (killed, crashed, out of memory): its sentinel says so at once.
- It reported an error instead of ready (the bundle no longer loads), or has not reported ready
  within ``start_timeout_s``.
- Its heartbeat has not moved for ``heartbeat_timeout_s``. The heartbeat is a thread of the child
  that bumps a shared counter several times per timeout. It keeps ticking while the main thread
  computes a long batch (every torch op releases the GIL), so a busy process is never taken for a
  hung one; it stops when the whole process stops (SIGSTOP stops every thread) or is wedged with
  the GIL held, and that is found within the timeout, idle or not.
- It has computed one slice for ``slice_timeout_s``: wedged without holding the GIL (a native call
  that never returns), which its heartbeat cannot tell from a long batch, so the bound is long.

``after_loss`` and ``backoff``: a lost process is replaced after a wait that doubles with each
failed start in a row, from ``backoff_s`` up to ``max_backoff_s``; a process lost after a healthy
run (serving for ``healthy_run_s``) is replaced at once, and a healthy run also resets the count
(TorchServe's worker restart: a delay between failed starts, reset once a worker runs). A failed
start is a process lost before it ran healthily: it never reported ready, or it died soon after.

``gives_up``: after ``max_failures`` failed starts in a row the server stops trying: it exits
non-zero, so that whatever restarts it (a restart policy, an orchestrator) starts it afresh.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass


@dataclass(frozen=True)
class HealPolicy:
    """How the supervisor detects a lost engine process and replaces it (``Settings`` gives the
    first four; the rest are fixed here)."""

    heartbeat_timeout_s: float = 0.6
    backoff_s: float = 0.5  # the wait after the first failed start; doubles with each one after
    max_failures: int = 5  # failed starts in a row before the server gives up
    slice_timeout_s: float = 120.0  # one slice computing this long: wedged
    max_backoff_s: float = 30.0
    start_timeout_s: float = 120.0  # from spawn to ready: the interpreter, torch, the bundle, warm-up
    healthy_run_s: float = 10.0  # serving this long resets the failed starts

    @property
    def beat_interval_s(self) -> float:
        """How often the child's heartbeat ticks: several times per timeout, so that a late tick
        (a busy core) is not a missed one."""
        return self.heartbeat_timeout_s / 6

    @property
    def tick_s(self) -> float:
        """How often the supervisor looks: a lost heartbeat is found within timeout + tick."""
        return min(0.1, self.heartbeat_timeout_s / 4)


@dataclass(frozen=True)
class Seen:
    """What the supervisor knows of one engine process at one moment (times on one monotonic clock)."""

    spawned: float
    ready: float | None = None  # when it reported ready; None while it starts
    beat: float | None = None  # when its heartbeat was last seen to move; None: not yet
    exitcode: int | None = None  # set once it has exited
    start_error: str | None = None  # what it reported instead of ready
    busy: float | None = None  # since when it computes its current slice; None: idle


def describe_exit(code: int) -> str:
    """``-9`` -> ``killed by SIGKILL``; ``1`` -> ``exited with code 1``."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def verdict(seen: Seen, now: float, policy: HealPolicy) -> str | None:
    """Why the process must be replaced, or None. Pure."""
    if seen.start_error is not None:
        return f"could not start: {seen.start_error}"
    if seen.exitcode is not None:
        return describe_exit(seen.exitcode)
    if seen.ready is None and now - seen.spawned >= policy.start_timeout_s:
        return f"not ready {now - seen.spawned:.0f} s after its start"
    if seen.beat is not None and now - seen.beat >= policy.heartbeat_timeout_s:
        return f"no heartbeat for {now - seen.beat:.2f} s (stopped, or wedged holding the GIL)"
    if seen.busy is not None and now - seen.busy >= policy.slice_timeout_s:
        return f"one slice computing for {now - seen.busy:.1f} s (wedged)"
    return None


def healthy(ready: float | None, now: float, policy: HealPolicy) -> bool:
    """Whether a process ready since ``ready`` has run healthily by ``now``."""
    return ready is not None and now - ready >= policy.healthy_run_s


def after_loss(failures: int, ready: float | None, lost: float, policy: HealPolicy) -> int:
    """Failed starts in a row once a process ready since ``ready`` (None: never) is lost at ``lost``."""
    return 0 if healthy(ready, lost, policy) else failures + 1


def backoff(failures: int, policy: HealPolicy) -> float:
    """Seconds to wait before the next start, after ``failures`` failed starts in a row."""
    if failures <= 0:
        return 0.0
    return min(policy.max_backoff_s, policy.backoff_s * 2 ** (failures - 1))


def gives_up(failures: int, policy: HealPolicy) -> bool:
    return failures >= policy.max_failures
