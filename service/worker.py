"""The engine in processes of its own (``SKIPVIT_ENGINE=process``, the default).

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
hand over the next batch while one computes (its slices wait in the pipes). If a child dies,
``predict`` raises ``EngineGone`` for every batch in flight and after.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import torch

from skipvit.kernels import set_backend
from skipvit.service.engine import BundleView, Engine, RowResult, resolve_device

MAX_AUTO_WORKERS = 4  # the default's cap: slices of a full batch (32) stay >= 8 rows


class EngineGone(RuntimeError):
    pass


def _child(conn, bundle_dir: str, device: str, top_k: int, threads: int | None, compact: str) -> None:
    set_backend(compact)
    if threads:
        torch.set_num_threads(threads)
    try:
        engine = Engine.from_dir(bundle_dir, device, top_k)
        engine.warm_up()
    except Exception as e:  # reported to the parent, which fails /livez with it
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", str(engine.device)))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if msg is None:
            return
        images, points = msg
        try:
            conn.send(("ok", engine.predict(torch.from_numpy(images), points)))
        except Exception as e:
            conn.send(("error", f"{type(e).__name__}: {e}"))


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


class _Child:
    """One engine process and its pipe. It takes slices in the order they were sent and answers in
    that order: a ticket per slice."""

    def __init__(self, ctx, name: str, args: tuple) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_child, args=(child, *args), name=name, daemon=True)
        self.proc.start()
        child.close()
        self.turn = threading.Condition()
        self.sent = self.received = 0
        self.dead = False

    def recv(self):
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            raise EngineGone(f"the engine process exited (code {self.proc.exitcode})") from None

    def send(self, msg) -> int:
        """Under the engine's send lock, so that every child sees batches in the same order."""
        ticket = self.sent
        self.sent += 1
        self.conn.send(msg)
        return ticket

    def answer(self, ticket: int):
        with self.turn:
            self.turn.wait_for(lambda: self.received == ticket or self.dead)
            if self.dead:
                raise EngineGone(f"the engine process exited (code {self.proc.exitcode})")
            try:
                return self.recv()
            finally:
                self.received += 1
                self.turn.notify_all()

    def mark_dead(self) -> None:
        with self.turn:
            self.dead = True
            self.turn.notify_all()


class EngineProcess(BundleView):
    """``workers`` child processes with ``threads`` torch threads each (``layout`` for the
    defaults); a batch is cut into one slice per child, answers are put back in row order."""

    def __init__(
        self,
        bundle_dir,
        device: str = "auto",
        top_k: int = 3,
        threads: int | None = None,
        compact: str = "auto",
        workers: int = 1,
    ) -> None:
        super().__init__(bundle_dir, top_k)
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        ctx = mp.get_context("spawn")  # never fork a process that has torch threads running
        args = (str(bundle_dir), device, top_k, threads, compact)
        self._children: list[_Child] = []
        self._send_lock = threading.Lock()
        self._next = 0  # the child that takes the first slice of the next batch (round robin)
        try:
            for i in range(workers):  # all load at once
                self._children.append(_Child(ctx, "skipvit-engine" + (f"-{i}" if workers > 1 else ""), args))
            for c in self._children:
                status, payload = c.recv()
                if status != "ready":
                    raise EngineGone(f"the engine process could not start: {payload}")
        except BaseException:
            self.close()
            raise
        self.device = torch.device(payload)

    @property
    def processes(self) -> list[mp.Process]:
        return [c.proc for c in self._children]

    def _slices(self, n: int, points: str | Sequence[str] | None) -> int:
        """How many slices a batch of ``n`` rows is cut into: one per child, at most one per row,
        and one where a row's answer depends on the others (a batch key of None)."""
        distinct = {points} if points is None or isinstance(points, str) else set(points)
        if any(p is not None and self.batch_key(p) is None for p in distinct):
            return 1
        return max(1, min(n, len(self._children)))

    def predict(self, images: torch.Tensor, points: str | Sequence[str] | None = None) -> list[RowResult]:
        """Send the batch's slices and wait for their answers. Several threads may call at once:
        each child takes slices in the order they were sent, so the next batch already waits in
        the pipes when a child finishes its slice."""
        n = images.shape[0]
        per_row = None if points is None or isinstance(points, str) else list(points)
        if per_row is not None and len(per_row) != n:
            raise ValueError(f"{n} images but {len(per_row)} row points")
        k = self._slices(n, points)
        cuts = [i * n // k for i in range(k + 1)]
        array = images.numpy()
        sent: list[tuple[_Child, int]] = []
        with self._send_lock:
            first = self._next
            self._next = (first + k) % len(self._children)
            try:
                for i in range(k):
                    child = self._children[(first + i) % len(self._children)]
                    lo, hi = cuts[i], cuts[i + 1]
                    rows_points = points if per_row is None else per_row[lo:hi]
                    sent.append((child, child.send((array[lo:hi], rows_points))))
            except (BrokenPipeError, OSError):
                self._gone()
        rows: list[RowResult] = []
        error = None
        for child, ticket in sent:
            try:
                status, payload = child.answer(ticket)
            except EngineGone:
                self._gone()
            if status == "ok":
                rows.extend(payload)
            else:
                error = error or payload
        if error is not None:
            raise RuntimeError(f"engine: {error}")
        return rows

    def _gone(self) -> NoReturn:
        """One child gone is the engine gone: every batch waiting on any child hears it."""
        for c in self._children:
            c.mark_dead()
        codes = ", ".join(str(c.proc.exitcode) for c in self._children if not c.proc.is_alive())
        raise EngineGone(f"the engine process exited (code {codes or 'unknown'})")

    def warm_up(self) -> None:  # done in the children before they reported ready
        pass

    def close(self, timeout: float = 5.0) -> None:
        """Ask every child to stop, wait up to ``timeout`` for all of them, then kill the rest.

        The request to stop goes from a thread of its own: a hung child stops reading, and a batch
        may then sit blocked in its full pipe (holding the send lock); close() does not wait behind
        it, and killing the child ends that send with an error."""

        def ask() -> None:
            if not self._send_lock.acquire(timeout=timeout):
                return
            try:
                for c in self._children:
                    if c.proc.is_alive():
                        with contextlib.suppress(OSError):
                            c.conn.send(None)
            finally:
                self._send_lock.release()

        asking = threading.Thread(target=ask, name="skipvit-engine-stop", daemon=True)
        asking.start()
        deadline = time.monotonic() + timeout
        for c in self._children:
            c.proc.join(max(0.0, deadline - time.monotonic()))
        for c in self._children:
            if c.proc.is_alive():
                c.proc.kill()
                c.proc.join(timeout)
        asking.join(timeout)
        if self._send_lock.acquire(timeout=timeout):  # a send cut short by the kill has raised
            self._send_lock.release()
        for c in self._children:
            c.conn.close()
