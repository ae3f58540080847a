"""`skipvit bench overload` and `skipvit bench big-images`: the open-loop generator against a
canned server, the summaries, the verdicts and the tables, with literal numbers."""

from __future__ import annotations

import asyncio

import pytest

from skipvit.benchmarks import bench_big_images, bench_overload
from skipvit.benchmarks.loadgen import request_pool
from skipvit.benchmarks.openloop import OpenLoopResult, Outcome, open_loop
from skipvit.cli import main
from tests.benchmarks.canned import BUSY, OK, against, read_request


def _open_loop(answer, **kwargs) -> OpenLoopResult:
    async def drive(port: int) -> OpenLoopResult:
        pool = request_pool("127.0.0.1", port, "/classify", [b"img"], per_request=1)
        return await open_loop("127.0.0.1", port, pool, images_per_request=1, answer_timeout_s=5, **kwargs)

    return asyncio.run(against(answer, drive))


def test_open_loop_keeps_its_schedule_and_accounts_for_every_request():
    """A canned server that answers every other request 200 after 50 ms and the others 503 at
    once: requests still go out on schedule (on new connections when the kept-alive ones are
    busy), and every one sent ends as exactly one outcome."""
    count = [0]

    async def answer(reader, writer) -> None:
        while True:
            await read_request(reader)
            count[0] += 1
            if count[0] % 2:
                await asyncio.sleep(0.05)
            writer.write(OK if count[0] % 2 else BUSY)
            await writer.drain()

    res = _open_loop(answer, rate=200, warmup_s=0.1, duration_s=0.5, max_connections=100)
    summary = res.summary(1, timeout_s=5)
    assert res.not_sent == 0 and len(res.outcomes) == 120 == count[0]
    assert summary["sent"] == summary["answered"] == 120
    assert set(summary["statuses"]) == {"200", "503"}
    assert 40 <= summary["ok_latency_ms"]["p50"] < 1000 and summary["refused_latency_ms"]["p50"] < 40


def test_the_summary_counts_goodput_in_the_window_and_200s_past_the_timeout():
    res = OpenLoopResult(rate=10, window=(0.0, 2.0))
    res.outcomes = [
        Outcome(0.1, 0.2, 200, True),
        Outcome(0.5, 3.0, 200, True),  # due in the window, answered after it: no goodput, and late
        Outcome(1.0, 1.01, 503, False),
        Outcome(1.5, 1.6, "unanswered", False),
        Outcome(2.5, 2.6, 200, True),  # due after the window
    ]
    s = res.summary(images_per_request=2, timeout_s=1.0)
    assert s["sent"] == 5 and s["answered"] == 4
    assert s["goodput_images_per_s"] == pytest.approx(1.0)  # one good answer of 2 images in 2 s
    assert s["ok_later_than_timeout"] == 1
    assert s["refused_latency_ms"]["p50"] == pytest.approx(10.0)


def _level(multiple, goodput, refused_p95, sent=100, answered=100, late=0):
    return {
        "multiple": multiple,
        "offered_requests_per_s": 100 * multiple,
        "goodput_images_per_s": goodput,
        "goodput_of_capacity": goodput / 100,
        "ok_latency_ms": {"p50": 10.0, "p95": 20.0},
        "refused_latency_ms": {"p50": 1.0, "p95": refused_p95},
        "statuses": {"200": 90, "503": 10} if refused_p95 == refused_p95 else {"200": 100},
        "sent": sent,
        "answered": answered,
        "not_sent": 0,
        "ok_later_than_timeout": late,
        "client_cpu_cores": 0.1,
    }


def test_the_overload_verdict_reads_each_target():
    good = [_level(1, 98, float("nan")), _level(3, 90, 12.0), _level(6, 80, 18.0)]
    v = bench_overload.verdict(100.0, good)
    assert all(t["met"] for t in v.values()), v
    bad = [_level(1, 98, float("nan")), _level(3, 80, 25.0, answered=99), _level(6, 70, 18.0, late=1)]
    v = bench_overload.verdict(100.0, bad)
    assert v["goodput_at_3x_of_capacity"]["measured"] == pytest.approx(0.8)
    assert not any(t["met"] for t in v.values()), v
    report = {
        "command": "skipvit bench overload",
        "machine": {"cpu": "x", "cores": 2},
        "capacity": {
            "concurrency": 64,
            "images_per_s": 100.0,
            "latency_ms": {"p95": 30.0},
            "after_levels_images_per_s": 95.0,
        },
        "levels": good,
        "targets": bench_overload.verdict(100.0, good),
    }
    md = bench_overload.render(report)
    assert md.count("\n| 1x") == 1 and "| 3x (300/s) | 90 | 90% |" in md
    assert "after the levels: 95 images/s" in md and "speed moved" not in md
    report["capacity"]["after_levels_images_per_s"] = 80.0  # the machine slowed down during the run
    assert "-20%: the machine's speed moved during the run" in bench_overload.render(report)


def _big_report(kept_images_per_s, peak, after):
    return {
        "command": "skipvit bench big-images",
        "machine": {"cpu": "x", "cores": 2},
        "settings": {"clients": 64, "big_clients": 8, "big_rate_per_client": 2, "big_image": "4096x4096"},
        "baseline": {
            "images_per_s": 300.0,
            "latency_ms": {"p95": 100.0},
            "statuses": {"200": 10},
            "client_cpu_cores": 0.1,
        },
        "with_big_images": {
            "images_per_s": kept_images_per_s,
            "latency_ms": {"p95": 150.0},
            "statuses": {"200": 10},
            "client_cpu_cores": 0.1,
        },
        "big_images": {
            "requests": 10,
            "statuses": {"200": 9, "503": 1},
            "latency_ms": {"p50": 500.0, "p95": 900.0},
        },
        "server_rss_bytes": {"before": 300 << 20, "peak": peak, "peak_sampled": peak, "after": after},
    }


def test_the_big_images_verdict_reads_each_target():
    ok = _big_report(240.0, 600 << 20, 320 << 20)
    v = bench_big_images.verdict(ok)
    assert all(t["met"] for t in v.values()) and v["normal_throughput_kept"]["measured"] == pytest.approx(0.8)
    bad = _big_report(150.0, 1500 << 20, 500 << 20)
    assert not any(t["met"] for t in bench_big_images.verdict(bad).values())
    ok["targets"] = v
    md = bench_big_images.render(ok)
    assert "| normal clients alone | 300 |" in md and "| with the big images | 240 |" in md
    assert "80%" in md and "+20 MB" in md


def test_the_big_image_is_at_the_pixel_cap_and_small_on_the_wire():
    import io

    from PIL import Image

    data = bench_big_images.big_png(1024)
    img = Image.open(io.BytesIO(data))
    assert img.size == (1024, 1024) and img.mode == "RGBA" and len(data) < 1 << 20


@pytest.mark.parametrize(
    ("command", "flags", "message"),
    [
        ("overload", ["--duration", "0"], "must be positive"),
        ("big-images", ["--big-clients", "0"], "must be positive"),
    ],
)
def test_the_cli_refuses_bad_flags_before_starting_anything(capsys, tmp_path, command, flags, message):
    (tmp_path / "bundle.json").write_text('{"default_point": "static", "front": [{"id": "static"}]}')
    with pytest.raises(SystemExit) as e:
        main(["bench", command, "--bundle", str(tmp_path), *flags])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_a_kept_alive_connection_the_server_closed_is_retried_once_on_a_new_one():
    """The canned server answers one request per connection and then closes it without saying so
    (as an idle timeout does): each later request finds its connection closed, answered nothing,
    and is sent again on a new one; none is lost."""

    async def answer(reader, writer) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()

    res = _open_loop(answer, rate=50, warmup_s=0.0, duration_s=0.4)
    s = res.summary(1, timeout_s=5)
    assert s["statuses"] == {"200": 20} and s["errors"] == {}, s
    assert res.stale_retries > 0


def test_the_generator_sends_with_its_collector_paused():
    """The generator's collector is off while it sends (its full passes over the outcomes kept
    stalled it, and the stall showed as server latency) and back on after; nested uses are one."""
    import gc

    from skipvit.benchmarks.loadgen import collector_paused

    enabled_while_answering: list[bool] = []

    async def answer(reader, writer) -> None:
        while True:
            await read_request(reader)
            enabled_while_answering.append(gc.isenabled())  # the canned server runs in the generator's loop
            writer.write(OK)
            await writer.drain()

    assert gc.isenabled()
    res = _open_loop(answer, rate=100, warmup_s=0.0, duration_s=0.2)
    assert len(res.outcomes) == 20 and enabled_while_answering == [False] * 20
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled() and gc.get_freeze_count() > 0
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner use leaves it off
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0
