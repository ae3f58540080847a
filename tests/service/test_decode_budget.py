"""Bounded decode: what a decode costs is known from the header and never underestimated, the
decodes in progress stay within the budget, large ones run at a lower priority, and a server sent
several maximum-size images at once stays far below what they would take all at once, and gives
the memory back after. Throughput beside normal clients is `skipvit bench big-images`'s
(docs/benchmarks.md)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from skipvit.service.budget import LARGE_DECODE_BYTES, BudgetTimeout, DecodeBudget, DecodePool
from tests.service.rawhttp import Served, read_response
from tests.service.server import REPO

MB = 1 << 20


def test_the_cost_from_the_header_covers_the_peak_memory_of_the_decode():
    """For a 4096x4096 image of each kind, the cost read from its header is at least the growth of
    the process's peak RSS while it decodes (a fresh process, its high-water mark reset)."""
    script = textwrap.dedent(
        """
        import io, numpy as np
        from PIL import Image
        from skipvit.service.budget import return_freed_memory
        from skipvit.service.decode import open_image, decode_cost, finish
        return_freed_memory()
        def status(field):
            for line in open("/proc/self/status"):
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
        n = 4096
        y, x = np.mgrid[0:n, 0:n]
        rgba = Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256, (x * 3) % 256], -1).astype(np.uint8))
        cases = []
        for mode, fmt in [("RGBA", "PNG"), ("RGB", "PNG"), ("P", "PNG"), ("I;16", "PNG"), ("RGBA", "WEBP"), ("RGB", "JPEG")]:
            img = rgba.convert("L").convert("I;16") if mode == "I;16" else rgba.convert(mode)
            buf = io.BytesIO()
            img.save(buf, format=fmt, **({"lossless": True, "method": 0} if fmt == "WEBP" else {}))
            cases.append((mode, fmt, buf.getvalue()))
        del img, rgba, x, y
        for mode, fmt, data in cases:
            before = status("VmRSS")
            open("/proc/self/clear_refs", "w").write("5")
            im = open_image(data, channels=3, size=28, max_pixels=n * n, name="x")
            cost = decode_cost(im)
            t = finish(im, channels=3, size=28, name="x")
            assert tuple(t.shape) == (3, 28, 28)
            print(mode, fmt, cost, status("VmHWM") - before)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300, check=True
    ).stdout
    rows = [line.split() for line in out.splitlines()]
    assert len(rows) == 6, out
    for mode, fmt, cost, peak in rows:
        assert int(peak) <= int(cost), (mode, fmt, int(cost) // MB, int(peak) // MB)
    costs = {(m, f): int(c) for m, f, c, _ in rows}
    assert costs[("RGB", "JPEG")] < 16 * MB  # drafted at 1/8 scale: 512x512, not 4096x4096


def test_the_budget_holds_decodes_in_arrival_order_and_gives_up_at_the_deadline():
    async def scenario() -> None:
        budget = DecodeBudget(100)
        order: list[str] = []
        release = asyncio.Event()

        async def decode(name: str, cost: int, timeout: float | None = None) -> None:
            async with budget.hold(cost, timeout):
                order.append(name)
                assert budget.used <= budget.capacity
                await release.wait()

        big = asyncio.create_task(decode("big", 80))
        await asyncio.sleep(0)
        waits = [asyncio.create_task(decode("second", 50)), asyncio.create_task(decode("small", 10))]
        await asyncio.sleep(0.01)
        assert order == ["big"] and budget.used == 80  # "small" fits, but waits its turn behind "second"
        with pytest.raises(BudgetTimeout):
            await decode("late", 30, timeout=0.05)
        assert len(budget.waiting) == 2
        release.set()
        await asyncio.gather(big, *waits)
        assert order == ["big", "second", "small"] and budget.used == 0 and not budget.waiting
        # larger than the whole budget: clamped, so it runs (alone)
        release.clear()
        huge = asyncio.create_task(decode("huge", 10_000))
        await asyncio.sleep(0.01)
        assert order[-1] == "huge" and budget.used == 100
        release.set()
        await huge
        # a waiter cancelled (its client gone) leaves the queue and lets the next one in
        release.clear()
        first = asyncio.create_task(decode("first", 90))
        await asyncio.sleep(0)
        gone, after = asyncio.create_task(decode("gone", 50)), asyncio.create_task(decode("after", 10))
        await asyncio.sleep(0.01)
        gone.cancel()
        await asyncio.sleep(0.01)
        assert order[-1] == "after" and budget.used == 100
        release.set()
        await asyncio.gather(first, after)
        assert budget.used == 0 and not budget.waiting

    asyncio.run(scenario())


def test_large_decodes_run_at_a_lower_priority_and_small_ones_do_not():
    import os

    def priority() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    async def scenario() -> tuple[int, int]:
        pool = DecodePool()
        try:
            return await pool.run(LARGE_DECODE_BYTES + 1, priority), await pool.run(MB, priority)
        finally:
            pool.close()

    own = priority()
    large, small = asyncio.run(scenario())
    assert large > own and small == own


@pytest.mark.slow
def test_maximum_size_images_at_once_stay_within_the_budget_and_the_memory_comes_back(tiny_bundle, tmp_path):
    """Six 4096x4096 RGBA PNGs sent at once: each holds about 138 MB while it decodes, so all six
    at once would take over 800 MB (and did: Pillow's copies took 240 MB each). With a 160 MB
    budget the server's RSS grows by far less, every request is answered, and a few seconds after
    the RSS is back near where it was."""
    from skipvit.benchmarks.bench_big_images import big_png, rss_bytes

    big = big_png(4096)
    with Served(tiny_bundle, tmp_path, SKIPVIT_DECODE_BUDGET_MB=160, SKIPVIT_REQUEST_TIMEOUT_S=60) as srv:
        pid = srv.proc.pid
        before, _ = rss_bytes(pid)
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        request = srv.classify_bytes([big], close=True)
        statuses: list[int] = []

        def one() -> None:
            with srv.connect(120) as s:
                s.sendall(request)
                statuses.append(read_response(s)[0])

        clients = [threading.Thread(target=one) for _ in range(6)]
        for c in clients:
            c.start()
        for c in clients:
            c.join(150)
        _, peak = rss_bytes(pid)
        time.sleep(2)
        after, _ = rss_bytes(pid)
    assert statuses == [200] * 6, statuses
    assert peak - before < 400 * MB, ((peak - before) // MB, srv.output()[-2000:])
    assert after - before < 96 * MB, (after - before) // MB
