"""Python's garbage collector in the server's process: fewer, shorter pauses, and each one timed.

Every pause of the collector stops the event loop, and so every request in flight, admission and
refusals included. Measured under 3x overload on the 2-core CPU machine (``gc.callbacks``), with
Python's defaults: full collections of about 0.4-0.5 s (they walk every object the process holds,
torch's and the app's included) and young ones of up to 30-50 ms, over a second in total in
eight seconds. So, once the bundle is loaded:

- ``settle``: collect once, then ``gc.freeze()``: what exists at that point (modules, the app,
  the bundle's metadata) moves to a generation the collector never walks again;
- a young generation of ``GEN0_THRESHOLD`` objects (Python's default is 700): an open connection
  and a request in flight make dozens of container objects, and at hundreds of requests a second
  the default collected more than fifty times a second.

``GcPauses`` times each collection into ``skipvit_gc_pause_seconds`` (by generation).
"""

from __future__ import annotations

import gc
import time

GEN0_THRESHOLD = 10_000


def settle() -> None:
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)


class GcPauses:
    """Times every collection into ``histogram`` (labelled by generation) while started."""

    def __init__(self, histogram) -> None:
        self.histogram = histogram
        self.started_at = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self.started_at = time.perf_counter()
        else:
            self.histogram.labels(str(info["generation"])).observe(time.perf_counter() - self.started_at)

    def start(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def stop(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)
