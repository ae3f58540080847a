"""`skipvit bench server`: the HTTP parser, the aggregation, the loopback guard, and the load
generator against the naive endpoint served in this process."""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skipvit.benchmarks.bench_server import (
    cpu_ms_per_request,
    fashion_mnist_pngs,
    histogram_sum_count,
    mean_batch,
    process_tree_cpu,
    render_markdown,
    verdict,
)
from skipvit.benchmarks.loadgen import (
    LevelResult,
    ProtocolError,
    Response,
    check_classify,
    check_loopback_url,
    parse_head,
    percentile,
    read_response,
    request_pool,
    run_level,
    summarize,
)
from skipvit.cli import build_parser, main
from tests.benchmarks.canned import OK, against, read_request
from tests.cli_args import argv
from tests.training.fixtures import write_idx

# ---- HTTP parsing


def _reader(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


def test_parse_head_reads_status_and_lowercases_header_names():
    status, headers = parse_head(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0")
    assert status == 503
    assert headers == {"retry-after": "1", "content-length": "0"}


@pytest.mark.parametrize("head", [b"SPDY/3 200 OK", b"HTTP/1.1 abc", b"HTTP/1.1 200 OK\r\nno colon here"])
def test_parse_head_refuses_what_is_not_http(head):
    with pytest.raises(ProtocolError):
        parse_head(head)


def test_read_response_keeps_alive_across_length_chunked_and_empty_bodies():
    data = (
        b'HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{"a": true}'
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n3;ext=1\r\nefg\r\n0\r\n\r\n"
        b"HTTP/1.1 204 No Content\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"
    )

    async def go():
        reader = _reader(data)
        first = await read_response(reader)
        second = await read_response(reader)
        third = await read_response(reader)
        with pytest.raises(asyncio.IncompleteReadError):
            await read_response(reader)
        return first, second, third

    first, second, third = asyncio.run(go())
    assert (first.status, first.body) == (200, b'{"a": true}')
    assert (second.status, second.body) == (200, b"abcdefg")
    assert (third.status, third.body) == (204, b"")


def test_read_response_without_a_length_is_a_protocol_error():
    async def go():
        return await read_response(_reader(b"HTTP/1.1 200 OK\r\n\r\nbody"))

    with pytest.raises(ProtocolError, match="Content-Length"):
        asyncio.run(go())


def test_check_classify_counts_results():
    body = json.dumps({"point": "static", "results": [{"index": 1}, {"index": 2}]}).encode()
    assert check_classify(Response(200, {}, body), 2) is None
    assert check_classify(Response(200, {}, body), 3) == "2 results for 3 images"
    assert check_classify(Response(503, {}, b"{}"), 2) == "status 503"
    assert check_classify(Response(200, {}, b"<html>"), 2) == "body is not the /classify JSON"


def test_request_pool_builds_a_complete_multipart_post():
    pngs = [b"PNG-A", b"PNG-B", b"PNG-C"]
    pool = request_pool("127.0.0.1", 9, "/classify?point=x", pngs, per_request=2)
    assert len(pool) == 1  # three images make one request of two
    head, _, body = pool[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /classify?point=x HTTP/1.1\r\n")
    assert f"Content-Length: {len(body)}".encode() in head
    assert body.count(b'name="files"') == 2 and b"PNG-A" in body and b"PNG-B" in body
    with pytest.raises(ValueError):
        request_pool("127.0.0.1", 9, "/classify", [], per_request=1)


# ---- aggregation


@pytest.mark.parametrize("q", [0, 1, 50, 95, 99, 100])
def test_percentile_matches_numpy(q):
    values = sorted(np.random.default_rng(q).exponential(20.0, size=257).tolist())
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_of_small_samples():
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    assert percentile([10.0, 20.0], 50) == 15.0


def test_summarize_counts_only_successes_in_the_rates():
    res = LevelResult(concurrency=4, images_per_request=2, elapsed_s=2.0)
    res.latencies_ms = [float(v) for v in range(1, 101)]  # 100 successes
    res.failed, res.status_503 = 6, 4
    out = summarize(res)
    assert out["requests"] == 100 and out["images"] == 200
    assert out["requests_per_s"] == 50.0 and out["images_per_s"] == 100.0
    assert out["latency_ms"]["p50"] == pytest.approx(50.5)
    assert out["latency_ms"]["max"] == 100.0
    assert (out["failed"], out["status_503"]) == (6, 4)


METRICS = """\
# HELP skipvit_batch_size images per forward pass
# TYPE skipvit_batch_size histogram
skipvit_batch_size_bucket{le="1.0"} 3.0
skipvit_batch_size_bucket{le="+Inf"} 10.0
skipvit_batch_size_count 10.0
skipvit_batch_size_sum 45.0
skipvit_batch_size_created 1.7e9
skipvit_batch_size_other_sum 99.0
skipvit_requests_total{status="200"} 12.0
"""


def test_histogram_sum_count_reads_prometheus_text():
    assert histogram_sum_count(METRICS, "skipvit_batch_size") == (45.0, 10.0)
    assert histogram_sum_count("skipvit_requests_total 3\n", "skipvit_batch_size") is None
    labelled = 'h_sum{point="a"} 2\nh_sum{point="b"} 3\nh_count{point="a"} 1\nh_count{point="b"} 1\n'
    assert histogram_sum_count(labelled, "h") == (5.0, 2.0)


def test_process_tree_cpu_counts_the_process_and_its_children():
    import subprocess
    import sys

    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\ntime.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", busy])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            own, children = process_tree_cpu(os.getpid())
            if children >= 0.25:
                break
            time.sleep(0.05)
        assert own > 0 and children >= 0.25
    finally:
        child.kill()
        child.wait()
    assert process_tree_cpu(2**22 + 12345) is None  # no such process
    probes = ({"cpu": (1.0, 2.0)}, {"cpu": (1.5, 4.0)})
    assert cpu_ms_per_request(probes, 100) == {"process": pytest.approx(5.0), "children": pytest.approx(20.0)}
    assert cpu_ms_per_request(({"cpu": None}, {"cpu": (1.0, 1.0)}), 10) is None


def test_mean_batch_is_the_delta_ratio_or_none():
    assert mean_batch(((45.0, 10.0), (245.0, 20.0))) == 20.0
    assert mean_batch((None, (1.0, 1.0))) is None
    assert mean_batch(((5.0, 2.0), (5.0, 2.0))) is None  # no batch ran in the window


def _level(server, c, images_per_s, p95, failed=0, mean=None):
    return {
        "server": server,
        "concurrency": c,
        "requests_per_s": images_per_s,
        "images_per_s": images_per_s,
        "latency_ms": {"p50": p95 / 2, "p95": p95, "p99": p95 * 1.2},
        "failed": failed,
        "status_503": 0,
        "mean_batch_size": mean,
    }


def _report(servers: dict, inproc: list[dict], targets: dict, max_wait_ms: float) -> dict:
    """A `bench server` report of ``servers`` and ``inproc`` rows, as ``render_markdown`` reads it."""
    settings = {"images_per_request": 1, "duration_s": 10.0, "requests": None, "warmup_s": 1.0}
    return {
        "command": "skipvit bench server",
        "bundle": "b",
        "point": "static",
        "servers": servers,
        "machine": {"cpu": "CPU", "cores": 2, "torch": "2", "torch_threads": 2},
        "settings": {**settings, "max_batch_size": 64, "max_wait_ms": max_wait_ms},
        "in_process": inproc,
        "targets": targets,
    }


def test_verdict_checks_both_targets_at_64_clients():
    servers = {
        "batched": [_level("batched", 8, 500, 20, mean=6.0), _level("batched", 64, 1200, 60, mean=31.6)],
        "naive": [_level("naive", 8, 300, 30), _level("naive", 64, 350, 190)],
    }
    inproc = [
        {"batch_size": 32, "images_per_s": 1500.0, "why": "mean batch", "reference": True},
        {"batch_size": 1, "images_per_s": 300.0, "why": "naive"},
    ]
    v = verdict(servers, inproc)
    assert v["clients"] == 64
    assert v["speedup"]["ratio"] == pytest.approx(1200 / 350) and v["speedup"]["met"]
    assert v["efficiency"]["ratio"] == pytest.approx(0.8) and v["efficiency"]["met"]
    # worse p95 than naive fails the first target even at a high speedup
    servers["batched"][1]["latency_ms"]["p95"] = 200
    assert not verdict(servers, inproc)["speedup"]["met"]
    # below 70% of in-process fails the second
    assert not verdict(servers, [{**inproc[0], "images_per_s": 1800.0}])["efficiency"]["met"]


def test_verdict_uses_the_highest_common_concurrency_without_64():
    servers = {
        "batched": [_level("batched", 16, 900, 30, failed=2)],
        "naive": [_level("naive", 16, 100, 160)],
    }
    v = verdict(servers, [])
    assert v["clients"] == 16 and "efficiency" not in v
    assert not v["speedup"]["met"] and not v["speedup"]["no_failures"]  # failures never pass


def test_verdict_reads_the_median_round_and_pairs_in_process_by_round():
    def rnd(row, r):
        return {**row, "round": r}

    servers = {
        "batched": [_level("batched", 8, 500, 20, mean=6.0)]
        + [
            rnd(_level("batched", 64, ips, p95, mean=32.0), r)
            for r, ips, p95 in ((1, 900, 90), (2, 1000, 80), (3, 700, 95))
        ],
        "naive": [_level("naive", 8, 300, 30)]
        + [rnd(_level("naive", 64, ips, 300), r) for r, ips in ((1, 250), (2, 200), (3, 280))],
    }
    inproc = [
        {"batch_size": 32 + r, "images_per_s": ips, "why": "mean batch", "round": r, "reference": True}
        for r, ips in ((1, 1200.0), (2, 1600.0), (3, 1000.0))
    ]
    inproc.append({"batch_size": 1, "images_per_s": 400.0, "why": "naive"})
    v = verdict(servers, inproc)
    # speedups 3.6, 5.0, 2.5 -> round 1; efficiencies 0.75, 0.625, 0.70 -> round 3
    assert v["speedup"]["round"] == 1 and v["speedup"]["ratio"] == pytest.approx(3.6)
    assert v["speedup"]["rounds"] == pytest.approx([3.6, 5.0, 2.5]) and v["speedup"]["met"]
    assert v["speedup"]["batched_p95_ms"] == 90  # the p95s of the median round
    assert v["efficiency"]["round"] == 3 and v["efficiency"]["ratio"] == pytest.approx(0.70)
    assert v["efficiency"]["batch_size"] == 35  # each round at its own mean batch
    assert v["efficiency"]["rounds"] == pytest.approx([0.75, 0.625, 0.70]) and v["efficiency"]["met"]
    # a round with two references (this process, the server's engine processes) reads the faster
    inproc.append({**inproc[0], "images_per_s": 1300.0, "engine": "the server's: 2 processes"})
    assert verdict(servers, inproc)["efficiency"]["rounds"] == pytest.approx([900 / 1300, 0.625, 0.70])
    assert verdict(servers, inproc)["efficiency"]["engine"] == "the server's: 2 processes"
    inproc.pop()
    servers["naive"][2]["failed"] = 1  # a failure in any round fails the first target
    assert not verdict(servers, inproc)["speedup"]["met"]
    md = render_markdown(_report(servers, inproc, v, max_wait_ms=5.0))
    assert "| batched | 64 (round 2) | 1,000.0 |" in md and "| 35 (round 3) | 1,000.0 |" in md
    assert "(rounds: 3.60x, 5.00x, 2.50x)" in md and "(rounds: 75.0%, 62.5%, 70.0%)" in md
    assert "median of 3 rounds" in md


def test_render_markdown_has_one_row_per_level_and_the_verdict():
    servers = {
        "batched": [_level("batched", 64, 1200, 60, mean=None)],
        "naive": [_level("naive", 64, 350, 190)],
    }
    inproc = [{"batch_size": 64, "images_per_s": 1500.0, "why": "max_batch_size", "reference": True}]
    md = render_markdown(_report(servers, inproc, verdict(servers, inproc), max_wait_ms=float("nan")))
    assert "| batched | 64 | 1,200.0 | 1,200.0 |" in md and "| naive | 64 |" in md
    assert "max_wait_ms n/a" in md and "| n/a |" in md  # absent /metrics shows as n/a
    assert "**3.43x**" in md and "**80.0%**" in md and "**met**" in md


# ---- loopback only


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000", "http://127.9.9.9:1/", "http://localhost:8000", "http://[::1]:8000/x"]
)
def test_loopback_urls_are_accepted(url):
    host, port, prefix = check_loopback_url(url)
    assert host in ("127.0.0.1", "127.9.9.9", "localhost", "::1")
    assert port in (1, 8000) and prefix in ("", "/x")


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.5:8000",
        "http://192.168.1.2",
        "http://example.com",
        "http://localhost.example.com:80",
        "http://[2001:db8::1]:80",
        "http://0.0.0.0:8000",
        "https://127.0.0.1:8443",
        "127.0.0.1:8000",
    ],
)
def test_other_hosts_are_refused(url):
    with pytest.raises(ValueError, match="Hint"):
        check_loopback_url(url)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--url", "http://203.0.113.7:8000"], "not a loopback address"),
        (["--point", "nope"], "no point 'nope'"),
        (["--inproc-seconds", "0"], "--inproc-seconds must be positive"),
    ],
)
def test_the_cli_refuses_bad_flags_before_starting_anything(capsys, tmp_path, flags, message):
    (tmp_path / "bundle.json").write_text('{"default_point": "static", "front": [{"id": "static"}]}')
    with pytest.raises(SystemExit) as e:
        main(["bench", "server", "--bundle", str(tmp_path), *flags])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_parses_the_bench_server_flags():
    args = build_parser().parse_args(["bench", "server", "--concurrency", "1,16", "--max-batch-size", "32"])
    assert (args.command, args.benchmark, args.concurrency, args.max_batch_size) == (
        "bench",
        "server",
        [1, 16],
        32,
    )
    defaults = build_parser().parse_args(["bench", "server"])
    assert (defaults.concurrency, defaults.rounds, defaults.inproc_seconds) == ([1, 8, 32, 64], 5, None)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "server", "--concurrency", "0,8"])


def test_fashion_mnist_pngs_encode_the_idx_test_images(tmp_path):
    images = np.arange(3 * 28 * 28, dtype=np.uint32).reshape(3, 28, 28) % 251
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    pngs = fashion_mnist_pngs(str(tmp_path), 2)
    assert len(pngs) == 2
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(pngs[1]))), images[1].astype(np.uint8))
    with pytest.raises(FileNotFoundError, match="Hint"):
        fashion_mnist_pngs(str(tmp_path / "missing"), 2)


def _fake_fashion_mnist(root: Path, n: int = 8) -> Path:
    images = (np.arange(n * 28 * 28, dtype=np.uint32).reshape(n, 28, 28) * 7) % 251
    write_idx(root / "t10k-images-idx3-ubyte.gz", images)
    return root


@pytest.mark.slow
def test_bench_server_end_to_end_with_rounds(tiny_bundle, tmp_path):
    """The whole command on the tiny bundle: both servers, two levels, two reference rounds with
    their in-process timings, the JSON and the markdown."""
    from skipvit.cli import main

    data = _fake_fashion_mnist(tmp_path)
    out = tmp_path / "bench"
    short = "--concurrency 1,4 --rounds 2 --duration 0.4 --warmup 0.1 --inproc-seconds 0.1 --max-wait-ms 2"
    js, md = out / "server.json", out / "server.md"
    main(argv(f"bench server {short}", bundle=tiny_bundle, data_dir=data, out_json=js, out_md=md))
    report = json.loads(js.read_text())
    for name in ("batched", "naive"):
        rows = report["servers"][name]
        assert [(r["concurrency"], r.get("round")) for r in rows] == [(1, None), (4, 1), (4, 2)]
        assert all(r["requests"] > 0 and r["failed"] == 0 for r in rows), rows
        assert all(r["server_cpu_ms_per_request"]["process"] > 0 for r in rows)
    # the batched server's engine runs in a child process, the naive one's in its own
    assert all(r["server_cpu_ms_per_request"]["children"] > 0 for r in report["servers"]["batched"])
    assert all(r["cpu_ms_per_image"] > 0 for r in report["in_process"])
    ref = [r for r in report["in_process"] if r.get("reference")]
    # each round: this process, and the server's engine processes fed directly where it has several
    from skipvit.service.worker import layout

    per_round = 2 if layout("cpu", None, None)[0] > 1 else 1
    assert [r["round"] for r in ref] == [1] * per_round + [2] * per_round
    assert ref[0]["engine"].startswith("this process") and ref[-1]["engine"].startswith(
        "the server's: 2 processes" if per_round == 2 else "this process"
    )
    means = [r["mean_batch_size"] for r in report["servers"]["batched"] if r.get("round")]
    assert [r["batch_size"] for r in ref] == [max(1, round(m)) for m in means for _ in range(per_round)]
    t = report["targets"]
    assert t["clients"] == 4 and len(t["speedup"]["rounds"]) == 2 and len(t["efficiency"]["rounds"]) == 2
    assert "(round 2)" in md.read_text()


# ---- the load generator, end to end


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_level_counts_503s_and_reconnects_after_connection_close():
    """A canned server: every third answer is a 503 that closes the connection."""
    served = [0]

    async def answer(reader, writer) -> None:
        while True:
            await read_request(reader)
            served[0] += 1
            if served[0] % 3 == 0:
                writer.write(
                    b"HTTP/1.1 503 Busy\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                await writer.drain()
                return
            writer.write(OK)
            await writer.drain()

    async def drive(port: int):
        pool = request_pool("127.0.0.1", port, "/classify", [b"img"], per_request=1)
        return await run_level(
            "127.0.0.1",
            port,
            pool,
            images_per_request=1,
            concurrency=3,
            duration_s=None,
            max_requests=60,
            warmup_s=0.05,
        )

    res = asyncio.run(against(answer, drive))
    assert res.ok + res.failed == 60
    assert res.status_503 == res.failed > 0 and res.ok > 0
    assert res.statuses[200] == res.ok and res.statuses[503] == res.status_503
    assert res.elapsed_s > 0


@pytest.fixture(scope="module")
def naive_port(tiny_bundle):
    """The naive endpoint over the tiny bundle, under uvicorn in a thread of this process."""
    import uvicorn

    from skipvit.benchmarks.naive_server import create_naive_app

    port = _free_port()
    config = uvicorn.Config(
        create_naive_app(tiny_bundle, "cpu"), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the naive app did not start"
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(10)


def _pngs(n: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), mode="L").save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def test_load_generator_against_the_naive_endpoint(naive_port):
    pool = request_pool("127.0.0.1", naive_port, "/classify", _pngs(8), per_request=2)
    res = asyncio.run(
        run_level(
            "127.0.0.1", naive_port, pool, images_per_request=2, concurrency=2, duration_s=1.0, warmup_s=0.3
        )
    )
    out = summarize(res)
    assert res.failed == 0, res.error_samples
    assert res.ok > 5 and dict(res.statuses) == {200: res.ok}
    assert out["images"] == 2 * out["requests"] == 2 * len(res.latencies_ms)
    assert 0.9 < res.elapsed_s < 1.5
    assert out["images_per_s"] == pytest.approx(out["images"] / res.elapsed_s)
    assert 0 < out["latency_ms"]["p50"] <= out["latency_ms"]["p95"] <= out["latency_ms"]["p99"]


def test_load_generator_counts_every_failure(naive_port):
    pool = request_pool("127.0.0.1", naive_port, "/classify?point=nope", _pngs(2), per_request=1)
    res = asyncio.run(
        run_level(
            "127.0.0.1",
            naive_port,
            pool,
            images_per_request=1,
            concurrency=2,
            duration_s=None,
            max_requests=12,
            warmup_s=0.0,
        )
    )
    assert res.ok == 0 and res.failed == 12 and dict(res.statuses) == {404: 12}
    assert res.error_samples[0] == "status 404"
