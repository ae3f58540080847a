"""The engine in processes of its own (``SKIPVIT_ENGINE=process``, the default), kept alive.

Why a process: the model's forward is a Python loop over layers whose torch ops each release and
re-take the GIL. In the server's process the event loop holds the GIL while it parses and answers
requests, so every re-take can wait a whole switch interval: measured on the 2-core CPU machine,
a one-image batch took 50 ms instead of 3 ms under load. A child process has its own GIL; a batch
crosses a pipe as a uint8 array (64 Fashion-MNIST images: 50 KB) and comes back as ``RowResult``s.

Why several (``SKIPVIT_ENGINE_WORKERS``; on CPU one per core by default, each with one torch
thread): one process with a thread per core runs each op as a parallel region that ends at a
barrier. When the event loop takes a core from one of those threads, the others spin at the
barrier until it is back, so every millisecond of HTTP work stalled every core. Here a batch is cut
into one contiguous slice per process; the slices run side by side with no barrier between them,
and a process the event loop pre-empts delays only its own slice (measured: `skipvit bench server`,
see docs/serving.md). A batch whose answer depends on its other rows (a point with a batch key of
None, per-batch LAC) is never cut.

``EngineProcess`` offers what the app needs of an ``Engine`` (metadata from the bundle, read in
this process; ``predict`` in the children). Each child runs one slice at a time; the batcher may
hand over the next batch while one computes (its slices wait in the pipes). A reader thread per
child resolves one future per slice, in the order the slices were sent.

Why a supervisor: a child can die (killed, out of memory) or stop answering (SIGSTOP, wedged), and
nothing else would notice while the server is idle, or ever for a stopped child. A thread watches
every child (its exit at once, its heartbeat within ``SKIPVIT_ENGINE_HEARTBEAT_TIMEOUT_S``), kills
and reaps a lost one, and starts another with a backoff; the decisions are ``service.healing``'s.
The slices a lost child held are sent once more to a live child if the batch's deadline allows,
else the batch hears ``EngineGone`` (503). Every slice's future is resolved exactly once: by its
child's answer, or with ``EngineGone`` when the child is lost.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait as wait_any
from pathlib import Path

import torch

from skipvit.service.child import Child, EngineGone
from skipvit.service.engine import BundleView, RowResult, resolve_device
from skipvit.service.healing import HealPolicy, after_loss, backoff, gives_up, healthy, verdict

MAX_AUTO_WORKERS = 4  # the default's cap: slices of a full batch (32) stay >= 8 rows
log = logging.getLogger("skipvit.service")
EXIT_STATUS_WAIT_S = 1.0  # a child whose pipe closed: how long to wait for its exit status


def usable_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup CPU quota (a container
    limited to 2 CPUs on a 16-core host sees all 16 in its affinity)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    for quota_file, period_file in (("cpu.max", None), ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us")):
        try:
            fields = (cgroup / quota_file).read_text().split()
            quota = fields[0]
            period = fields[1] if period_file is None else (cgroup / period_file).read_text().strip()
        except (OSError, IndexError):
            continue
        if quota not in ("max", "-1"):
            with contextlib.suppress(ValueError, ZeroDivisionError):
                cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
        break
    return cores


def layout(device: str, workers: int | None, threads: int | None) -> tuple[int, int | None]:
    """(engine processes, torch threads in each) for ``device`` where the settings leave them open.

    On CPU: one process per usable core (at most ``MAX_AUTO_WORKERS``), the cores shared out as
    threads. On CUDA: one process (the GPU does the parallel work), torch's own thread count."""
    if resolve_device(device).type != "cpu":
        return workers or 1, threads
    cores = usable_cores()
    workers = workers or max(1, min(cores, MAX_AUTO_WORKERS))
    return workers, threads or max(1, cores // workers)


class _Slot:
    """One place for an engine process: the one running now (None between a loss and the next
    start) and the failed starts in a row."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.child: Child | None = None
        self.failures = 0
        self.start_at = 0.0  # when ``child`` is None: when to start the next one
        self.lost_at = 0.0


class EngineProcess(BundleView):
    """``workers`` child processes with ``threads`` torch threads each (``layout`` for the
    defaults), kept alive by a supervisor (``policy``); a batch is cut into one slice per serving
    child, answers are put back in row order.

    ``on_restart`` is called for each replacement started; ``on_give_up`` (with the reason, from the
    supervisor's thread) once a slot's starts have failed ``policy.max_failures`` times in a row."""

    def __init__(
        self,
        bundle_dir,
        device: str = "auto",
        top_k: int = 3,
        threads: int | None = None,
        compact: str = "auto",
        workers: int = 1,
        policy: HealPolicy | None = None,
        on_restart: Callable[[], None] | None = None,
        on_give_up: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(bundle_dir, top_k)
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.policy = policy or HealPolicy()
        self._ctx = mp.get_context("spawn")  # never fork a process that has torch threads running
        self._args = (str(bundle_dir), device, top_k, threads, compact)
        self._on_restart, self._on_give_up = on_restart, on_give_up
        self._slots = [_Slot("skipvit-engine" + (f"-{i}" if workers > 1 else "")) for i in range(workers)]
        self._send_lock = threading.Lock()
        self._changed = threading.Condition()  # a child became ready or was lost; closed; given up
        self._next = 0  # the serving child that takes the first slice of the next batch (round robin)
        self._closed = False
        self.given_up: str | None = None
        self._supervisor: threading.Thread | None = None
        try:
            for slot in self._slots:  # all load at once
                slot.child = self._spawn(slot)
            for slot in self._slots:
                assert slot.child is not None
                slot.child.started.wait(self.policy.start_timeout_s)
                if not slot.child.serving:
                    why = slot.child.start_error or f"it exited (code {slot.child.proc.exitcode})"
                    raise EngineGone(f"the engine process could not start: {why}")
        except BaseException:
            self.close()
            raise
        self.device = torch.device(self._slots[0].child.device)
        self._supervisor = threading.Thread(target=self._supervise, name="skipvit-supervisor", daemon=True)
        self._supervisor.start()

    # -- what the app sees ---------------------------------------------------------------------
    @property
    def _children(self) -> list[Child]:
        return [s.child for s in self._slots if s.child is not None]

    @property
    def processes(self) -> list[mp.Process]:
        return [c.proc for c in self._children]

    def capacity(self) -> tuple[int, int]:
        """(children serving, children wanted): fewer while one is lost and replaced."""
        return sum(c.serving for c in self._children), len(self._slots)

    def _slices(self, n: int, points: str | Sequence[str] | None, children: int) -> int:
        """How many slices a batch of ``n`` rows is cut into: one per serving child, at most one
        per row, and one where a row's answer depends on the others (a batch key of None)."""
        distinct = {points} if points is None or isinstance(points, str) else set(points)
        if any(p is not None and self.batch_key(p) is None for p in distinct):
            return 1
        return max(1, min(n, children))

    def predict(
        self,
        images: torch.Tensor,
        points: str | Sequence[str] | None = None,
        deadline: float | None = None,
    ) -> list[RowResult]:
        """Send the batch's slices to the serving children and wait for their answers. Several
        threads may call at once. A slice whose child is lost is sent once more to a serving child
        (waiting for one to be back, if none is) unless ``deadline`` (``time.monotonic()``) has
        passed; otherwise, or if it is lost again, ``EngineGone``."""
        n = images.shape[0]
        per_row = None if points is None or isinstance(points, str) else list(points)
        if per_row is not None and len(per_row) != n:
            raise ValueError(f"{n} images but {len(per_row)} row points")
        serving = self._serving(deadline)
        k = self._slices(n, points, len(serving))
        cuts = [i * n // k for i in range(k + 1)]
        array = images.numpy()
        parts = [
            (array[lo:hi], points if per_row is None else per_row[lo:hi])
            for lo, hi in itertools.pairwise(cuts)
        ]
        with self._send_lock:
            first = self._next
            self._next = first + k
            sent = [(part, serving[(first + i) % len(serving)].send(part)) for i, part in enumerate(parts)]
        rows: list[RowResult] = []
        error = None
        for part, future in sent:
            try:
                status, payload = future.result()
            except EngineGone as e:
                status, payload = self._retry(part, e, deadline)
            if status == "ok":
                rows.extend(payload)
            else:
                error = error or payload
        if error is not None:
            raise RuntimeError(f"engine: {error}")
        return rows

    def _retry(self, part, lost: EngineGone, deadline: float | None):
        """Send a lost slice once more, to a serving child; ``EngineGone`` if time is up or it is
        lost again."""
        if deadline is not None and time.monotonic() >= deadline:
            raise EngineGone(f"{lost}; no time left to retry its slice") from None
        serving = self._serving(deadline)
        with self._send_lock:
            child = serving[self._next % len(serving)]
            self._next += 1
            future = child.send(part)
        log.warning("a slice of %d rows is retried on %s after: %s", len(part[0]), child.name, lost)
        return future.result()

    def _serving(self, deadline: float | None) -> list[Child]:
        """The children serving now; waits (until ``deadline``) while there are none."""
        with self._changed:
            while True:
                if self._closed:
                    raise EngineGone("the engine is closed")
                serving = [c for c in self._children if c.serving]
                if serving:  # also once given up: the server drains on what is left
                    return serving
                if self.given_up is not None:
                    raise EngineGone(f"the engine could not be healed: {self.given_up}")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise EngineGone("no engine process came back before the request deadline")
                self._changed.wait(left)

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def warm_up(self) -> None:  # done in the children before they reported ready
        pass

    # -- the supervisor ------------------------------------------------------------------------
    def _spawn(self, slot: _Slot) -> Child:
        return Child(self._ctx, slot.name, self._args, self.policy, self._notify)

    def _supervise(self) -> None:
        """Each tick (or at once when a child exits): tend every slot. Never raises."""
        while not self._closed and self.given_up is None:
            sentinels = [c.proc.sentinel for c in self._children if c.dead is None]
            try:
                wait_any(sentinels, timeout=self.policy.tick_s)
                now = time.monotonic()
                for slot in self._slots:
                    if not self._closed and self.given_up is None:
                        self._tend(slot, now)
            except Exception:  # a bug here must not end the watch
                log.exception("engine supervisor")
                time.sleep(self.policy.tick_s)

    def _tend(self, slot: _Slot, now: float) -> None:
        child = slot.child
        if child is None:
            if now >= slot.start_at:
                slot.child = self._spawn(slot)
                log.warning(
                    "engine process %s: starting a replacement (pid %s), %.1f s after the loss",
                    slot.name,
                    slot.child.proc.pid,
                    now - slot.lost_at,
                )
                if self._on_restart is not None:
                    self._on_restart()
            return
        seen = child.seen(now)
        why = verdict(seen, now, self.policy)
        if why is None and child.dead is not None and child.proc.exitcode is None:
            # Its pipe closed first: the process is on its way out, and its exit status (killed
            # by which signal, which code) says more than the pipe. Wait a moment for it.
            child.proc.join(EXIT_STATUS_WAIT_S)
            seen = child.seen(now)
            why = verdict(seen, now, self.policy)
        why = why or child.dead
        if why is None:
            if seen.ready is not None and slot.failures and healthy(seen.ready, now, self.policy):
                slot.failures = 0
            if child.ready_at is not None and not child.announced:
                child.announced = True
                if slot.lost_at:
                    log.warning(
                        "engine process %s is back (pid %s), %.1f s after the loss",
                        slot.name,
                        child.proc.pid,
                        child.ready_at - slot.lost_at,
                    )
            return
        self._replace(slot, child, why, now)

    def _replace(self, slot: _Slot, child: Child, why: str, now: float) -> None:
        """Take ``child`` out of service, kill and reap it, plan its replacement (or give up)."""
        child.lose(why)  # its slices go to the serving children at once
        code = child.end()
        held = child.dropped
        slot.child, slot.lost_at = None, now
        slot.failures = after_loss(slot.failures, child.ready_at, now, self.policy)
        if gives_up(slot.failures, self.policy):
            reason = (
                f"engine process {slot.name} failed {slot.failures} starts in a row "
                f"(SKIPVIT_ENGINE_MAX_RESPAWN_FAILURES={self.policy.max_failures}); the last: {why}"
            )
            log.error("%s; giving up", reason)
            with self._changed:
                self.given_up = reason
                self._changed.notify_all()
            if self._on_give_up is not None:
                self._on_give_up(reason)
            return
        slot.start_at = now + backoff(slot.failures, self.policy)
        log.error(
            "engine process %s (pid %s) lost: %s; ended and reaped (exit code %s); %d slice%s in flight "
            "retried; a replacement starts in %.1f s (%d lost before a healthy run, in a row)",
            slot.name,
            child.proc.pid,
            why,
            code,
            held,
            "" if held == 1 else "s",
            slot.start_at - now,
            slot.failures,
        )

    def close(self, timeout: float = 5.0) -> None:
        """Stop the supervisor, ask every child to stop, wait up to ``timeout`` for all of them,
        then kill the rest; every slice still waiting hears ``EngineGone``.

        The request to stop goes from a thread of its own: a hung child stops reading, and a batch
        may then sit blocked in its full pipe (holding the send lock); close() does not wait behind
        it, and killing the child ends that send with an error."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(timeout)
        children = self._children

        def ask() -> None:
            if not self._send_lock.acquire(timeout=timeout):
                return
            try:
                for c in children:
                    if c.proc.exitcode is None:
                        with contextlib.suppress(OSError, ValueError):
                            c.conn.send(None)
            finally:
                self._send_lock.release()

        asking = threading.Thread(target=ask, name="skipvit-engine-stop", daemon=True)
        asking.start()
        deadline = time.monotonic() + timeout
        for c in children:
            c.proc.join(max(0.0, deadline - time.monotonic()))
        for c in children:
            c.lose("the engine is closing")
            c.end(timeout)
        asking.join(timeout)
        if self._send_lock.acquire(timeout=timeout):  # a send cut short by the kill has raised
            self._send_lock.release()
