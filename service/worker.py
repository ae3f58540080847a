"""The engine in a process of its own (``SKIPVIT_ENGINE=process``, the default).

Why: the model's forward is a Python loop over layers whose torch ops each release and re-take
the GIL. In the server's process the event loop holds the GIL while it parses and answers
requests, so every re-take can wait a whole switch interval: measured on the 2-core CPU machine,
a one-image batch took 50 ms instead of 3 ms under load. A child process has its own GIL; a batch
crosses a pipe as a uint8 array (64 Fashion-MNIST images: 50 KB) and comes back as ``RowResult``s.

``EngineProcess`` offers what the app needs of an ``Engine`` (metadata from the bundle, read in
this process; ``predict`` in the child). One batch at a time, as the batcher's single worker
thread guarantees. If the child dies, ``predict`` raises ``EngineGone`` for that batch and after.
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
        self._lock = threading.Lock()
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
        with self._lock:
            try:
                self._conn.send((images.numpy(), points))
            except (BrokenPipeError, OSError):
                raise EngineGone(f"the engine process exited (code {self._proc.exitcode})") from None
            status, payload = self._recv()
        if status != "ok":
            raise RuntimeError(f"engine: {payload}")
        return payload

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
