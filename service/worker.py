"""The engine in a process of its own (``SKIPVIT_ENGINE=process``, the default).

Why: the model's forward is a Python loop over layers whose torch ops each release and re-take
the GIL. In the server's process the event loop holds the GIL while it parses and answers
requests, so every re-take can wait a whole switch interval: measured on the 2-core CPU machine,
a one-image batch took 50 ms instead of 3 ms under load. A child process has its own GIL; a batch
crosses a pipe as a uint8 array (64 Fashion-MNIST images: 50 KB) and comes back as ``RowResult``s.

``EngineProcess`` offers what the app needs of an ``Engine`` (metadata from the bundle, read in
this process; ``predict`` in the child). The child runs one batch at a time; the batcher may hand
over the next one while it computes (it waits in the pipe). If the child dies, ``predict`` raises
``EngineGone`` for every batch in flight and after.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import threading
from collections.abc import Sequence

import torch

from kernels import set_backend
from service.engine import BundleView, Engine, RowResult


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


class EngineProcess(BundleView):
    def __init__(self, bundle_dir, device: str = "auto", top_k: int = 3, threads: int | None = None,
                 compact: str = "auto") -> None:  # fmt: skip
        super().__init__(bundle_dir, top_k)
        ctx = mp.get_context("spawn")  # never fork a process that has torch threads running
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_child, args=(child, str(bundle_dir), device, top_k, threads, compact),
                                 name="skipvit-engine", daemon=True)  # fmt: skip
        self._proc.start()
        child.close()
        self._send_lock = threading.Lock()
        self._turn = threading.Condition()
        self._sent = self._received = 0  # tickets: answers come back in the order batches were sent
        self._dead = False
        status, payload = self._recv()
        if status != "ready":
            self.close()
            raise EngineGone(f"the engine process could not start: {payload}")
        self.device = torch.device(payload)

    def _recv(self):
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            raise EngineGone(f"the engine process exited (code {self._proc.exitcode})") from None

    def predict(self, images: torch.Tensor, points: str | Sequence[str] | None = None) -> list[RowResult]:
        """Send the batch and wait for its answer. Several threads may call at once: the child
        takes batches in the order they were sent, so the next one already waits in the pipe when
        it finishes one, and answers come back in that order (a ticket per batch)."""
        with self._send_lock:
            ticket = self._sent
            self._sent += 1
            try:
                self._conn.send((images.numpy(), points))
            except (BrokenPipeError, OSError):
                self._gone()
        with self._turn:
            self._turn.wait_for(lambda: self._received == ticket or self._dead)
            if self._dead:
                self._gone()
            try:
                status, payload = self._recv()
            except EngineGone:
                self._dead = True
                raise
            finally:
                self._received += 1
                self._turn.notify_all()
        if status != "ok":
            raise RuntimeError(f"engine: {payload}")
        return payload

    def _gone(self):
        with self._turn:
            self._dead = True
            self._turn.notify_all()
        raise EngineGone(f"the engine process exited (code {self._proc.exitcode})")

    def warm_up(self) -> None:  # done in the child before it reported ready
        pass

    def close(self, timeout: float = 5.0) -> None:
        if self._proc.is_alive():
            with contextlib.suppress(OSError):
                self._conn.send(None)
            self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout)
        self._conn.close()
