"""How much memory the decodes in progress may hold at once, and where the large ones run.

A 4096x4096 RGBA PNG of a few hundred KB decodes to 64 MB and, converted, holds about twice that
at its peak (``service.decode.decode_cost`` tells from the header, before any pixel). Eight
clients sending such images at once took the server to 1.9 GB, and their decodes took the cores
from everyone else. So:

- ``DecodeBudget``: a decode starts only once its cost fits in the budget
  (``SKIPVIT_DECODE_BUDGET_MB``) beside those in progress; the others wait in arrival order, at
  most until their request's deadline (then 503, overloaded). One image larger than the whole
  budget runs alone. Ordinary images cost a few MB and never wait for each other.
- ``DecodePool``: images costing more than ``LARGE_DECODE_BYTES`` decode in threads of their own
  at a lower CPU priority (nice 10 on Linux), so that the event loop and the engine processes keep
  the cores while they run; the rest decode in asyncio's default threads as before.
- ``return_freed_memory``: glibc's malloc raises its mmap threshold after large blocks are freed
  (up to 32 MB), and then keeps later image buffers on its heap after they are freed: RSS stayed
  at 547 MB after the large images stopped. A fixed threshold keeps every large buffer mmapped, so
  freeing it returns it to the system.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import ctypes.util
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

log = logging.getLogger("skipvit.service")
T = TypeVar("T")

LARGE_DECODE_BYTES = 16 << 20  # decodes above this run in the low-priority threads
LARGE_DECODE_NICE = 10
MMAP_THRESHOLD_BYTES = 1 << 20
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


class BudgetTimeout(Exception):
    """The budget did not free up before the request's deadline."""


class DecodeBudget:
    """Bytes of decode memory, held while a decode runs and waited for in arrival order. Used only
    on the event loop."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self.waiting: collections.deque[tuple[int, asyncio.Future]] = collections.deque()

    @contextlib.asynccontextmanager
    async def hold(self, cost: int, timeout: float | None = None) -> AsyncIterator[None]:
        """Hold ``cost`` bytes (at most the whole budget) while the block runs; wait at most
        ``timeout`` seconds for them (``BudgetTimeout`` after)."""
        cost = min(cost, self.capacity)
        if self.waiting or self.used + cost > self.capacity:
            granted = asyncio.get_running_loop().create_future()
            entry = (cost, granted)
            self.waiting.append(entry)
            try:
                await asyncio.wait_for(asyncio.shield(granted), timeout)
            except (TimeoutError, asyncio.CancelledError) as e:
                if granted.done() and not granted.cancelled():  # granted as it gave up: hand it on
                    self._release(cost)
                else:
                    granted.cancel()
                    self.waiting.remove(entry)
                    self._grant()  # it may have been holding up smaller ones behind it
                if isinstance(e, asyncio.CancelledError):
                    raise
                raise BudgetTimeout from None
        else:
            self.used += cost
        try:
            yield
        finally:
            self._release(cost)

    def _release(self, cost: int) -> None:
        self.used -= cost
        self._grant()

    def _grant(self) -> None:
        while self.waiting and self.used + self.waiting[0][0] <= self.capacity:
            cost, granted = self.waiting.popleft()
            self.used += cost
            granted.set_result(None)


def _lower_priority() -> None:
    """A decode thread's initializer: nice it (Linux sets priority per thread)."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LARGE_DECODE_NICE)


class DecodePool:
    """Threads for the large decodes, at a lower priority, created on first use."""

    def __init__(self, workers: int = 2) -> None:
        self.workers = workers
        self._executor: ThreadPoolExecutor | None = None

    async def run(self, cost: int, fn: Callable[..., T], *args, **kwargs) -> T:
        if cost <= LARGE_DECODE_BYTES:
            return await asyncio.to_thread(fn, *args, **kwargs)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                self.workers, thread_name_prefix="skipvit-decode", initializer=_lower_priority
            )
        return await asyncio.get_running_loop().run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


def return_freed_memory() -> bool:
    """Fix glibc's mmap threshold (see the module's docstring); False where there is no glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError, TypeError):
        return False
