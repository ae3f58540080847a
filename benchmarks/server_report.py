"""The verdict and the report of `skipvit bench server`: pure functions of the measured figures.

The targets: at 64 clients the batched server serves >= 3x the naive endpoint's
images/s at no worse p95 (and neither fails a request), and >= 70% of the images/s the engine
reaches without HTTP at the server's mean batch size: the faster of ``engine.predict`` in the
bench's process and, where the server splits batches across several engine processes, those
processes fed directly.

The reference level may run in several rounds (``round`` 1..N on its rows), each one batched,
in-process, naive, seconds apart. Each target's ratio is taken within a round and the verdict
reads the median round, because this machine's speed drifts more between minutes than within
seconds; every round is reported.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any

TARGET_SPEEDUP, TARGET_EFFICIENCY, TARGET_CLIENTS = 3.0, 0.70, 64


def machine_info() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def machine_text(report: dict) -> str:
    """'<cpu>, N cores' and where the server and the load generator ran."""
    machine, cpus = report["machine"], report.get("cpus") or {}
    text = f"{machine.get('cpu')}, {cpus.get('available', machine.get('cores', '?'))} cores"
    if not (cpus.get("server") or cpus.get("loadgen")):
        return f"{text}, shared by the server and the load generator"
    server, loadgen = (f"CPUs {cpus[k]}" if cpus.get(k) else "every CPU" for k in ("server", "loadgen"))
    return f"{text}; server on {server}, load generator on {loadgen}"


def reference_level(concurrency) -> int:
    """The level the targets are read at: 64 clients if run, else the highest."""
    return TARGET_CLIENTS if TARGET_CLIENTS in concurrency else max(concurrency)


def reference_clients(servers: dict[str, list[dict]]) -> int | None:
    """The reference level among those both servers ran at."""
    batched = {r["concurrency"] for r in servers.get("batched", [])}
    common = batched & {r["concurrency"] for r in servers.get("naive", [])}
    return reference_level(common) if common else None


def level(servers: dict[str, list[dict]], name: str, c: int, rnd: int | None = None) -> dict:
    """The row of ``name`` at ``c`` clients (of round ``rnd``; rows without a round are round 1)."""
    return next(r for r in servers[name] if r["concurrency"] == c and r.get("round", 1) == (rnd or 1))


def rounds_of(servers: dict[str, list[dict]], c: int) -> list[int]:
    return sorted({r.get("round", 1) for r in servers.get("batched", []) if r["concurrency"] == c})


def _median_round(values: list[tuple[int, float]]) -> tuple[int, float]:
    """(round, ratio) of the median ratio (the lower middle of an even count)."""
    ordered = sorted(values, key=lambda v: v[1])
    return ordered[(len(ordered) - 1) // 2]


def verdict(servers: dict[str, list[dict]], inproc: list[dict]) -> dict:
    """The two targets at the reference concurrency (64 clients, or the highest one run), read off
    the median round. The ``inproc`` rows marked ``reference`` pair with their round's servers
    (rows without a round are round 1); where a round has several, the fastest is its reference."""
    c = reference_clients(servers)
    if c is None:
        return {}
    speed, rows = [], {}
    for rnd in rounds_of(servers, c):
        bat, nai = level(servers, "batched", c, rnd), level(servers, "naive", c, rnd)
        ratio = bat["images_per_s"] / nai["images_per_s"] if nai["images_per_s"] > 0 else float("nan")
        speed.append((rnd, ratio))
        rows[rnd] = (bat, nai)
    rnd, speedup = _median_round(speed)
    bat, nai = rows[rnd]
    p95_b, p95_n = bat["latency_ms"]["p95"], nai["latency_ms"]["p95"]
    clean = all(b["failed"] == 0 and n["failed"] == 0 for b, n in rows.values())
    out: dict[str, Any] = {
        "clients": c,
        "speedup": {
            "round": rnd,
            "batched_images_per_s": bat["images_per_s"],
            "naive_images_per_s": nai["images_per_s"],
            "ratio": speedup,
            "rounds": [v for _, v in speed],
            "batched_p95_ms": p95_b,
            "naive_p95_ms": p95_n,
            "no_failures": clean,
            "met": bool(speedup >= TARGET_SPEEDUP and p95_b <= p95_n and clean),
        },
    }
    eff = []
    for rnd in rows:
        refs = [r for r in inproc if r.get("reference") and r.get("round", 1) == rnd]
        if refs:
            ref = max(refs, key=lambda r: r["images_per_s"])
            eff.append((rnd, rows[rnd][0]["images_per_s"] / ref["images_per_s"], ref))
    if eff:
        rnd, ratio = _median_round([(r, v) for r, v, _ in eff])
        ref = next(x for r, _, x in eff if r == rnd)
        out["efficiency"] = {
            "round": rnd,
            "batch_size": ref["batch_size"],
            "basis": ref["why"],
            "engine": ref.get("engine"),
            "served_images_per_s": rows[rnd][0]["images_per_s"],
            "inprocess_images_per_s": ref["images_per_s"],
            "ratio": ratio,
            "rounds": [v for _, v, _ in eff],
            "met": bool(ratio >= TARGET_EFFICIENCY),
        }
    return out


def write_report(report: dict, markdown: str, out_json: str | Path, out_md: str | None) -> None:
    """The JSON (NaN as null), the markdown if asked, and the markdown on stdout."""
    path = Path(out_json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(finite(report), indent=2) + "\n")
    if out_md:
        Path(out_md).parent.mkdir(parents=True, exist_ok=True)
        Path(out_md).write_text(markdown)
    print(markdown)
    print(f"written to {path}" + (f" and {out_md}" if out_md else ""), file=sys.stderr)


def finite(x: Any) -> Any:
    """NaN (a level with no successful request) -> null, so the JSON stays strict."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [finite(v) for v in x]
    return x


def _f(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{digits}f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.0f}%"


def _server_cpu(cpu: dict | None) -> str:
    """ "process + children" (the HTTP process and the engine process), or the process alone."""
    if not cpu:
        return "n/a"
    if cpu["children"] > 0.005:
        return f"{cpu['process']:.2f} + {cpu['children']:.2f}"
    return f"{cpu['process']:.2f}"


def _round(row: dict) -> str:
    return f" (round {row['round']})" if "round" in row else ""


def _in_round(target: dict) -> str:
    return f" in round {target['round']}" if len(target.get("rounds", [])) > 1 else ""


def _median_note(target: dict) -> str:
    n = len(target.get("rounds", []))
    return f" (each ratio the median of {n} rounds)" if n > 1 else ""


def _spread(target: dict, unit: str) -> str:
    values = target.get("rounds", [])
    if len(values) < 2:
        return ""
    shown = [f"{v:.2f}x" if unit == "x" else f"{100 * v:.1f}%" for v in values]
    return f" (rounds: {', '.join(shown)})"


def render_markdown(report: dict) -> str:
    """The header line, the load table, the in-process table and the verdict, as markdown.

    Server CPU is per answered request over the window, from /proc: the server process, plus its
    children (the engine process) where it has any. Load-generator CPU is this process's CPU time
    over the window, in % of one core: what the generator took from the server on a small machine.
    In-process CPU is this process's CPU time per image while the engine is timed."""
    m, s = report["machine"], report["settings"]
    window = f"{s['requests']} requests" if s["requests"] else f"{s['duration_s']:g} s"
    lines = [
        f"`{report['command']}`",
        "",
        f"CPU {m['cpu']}, {m['cores']} cores; torch {m['torch']} ({m['torch_threads']} threads in the bench "
        f"process); bundle `{report['bundle']}`, point `{report['point']}`; {s['images_per_request']} image(s) "
        f"per request, {window} per level after {s['warmup_s']:g} s warm-up; server batching: "
        f"max_batch_size {s['max_batch_size']}, max_wait_ms {_f(s['max_wait_ms'], 0)}.",
        "",
        "| server | clients | requests/s | images/s | p50 ms | p95 ms | p99 ms | failed | 503 | mean batch "
        "| server CPU ms/request | load-generator CPU |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, rows in report["servers"].items():
        for r in rows:
            lat = r["latency_ms"]
            lines.append(
                f"| {name} | {r['concurrency']}{_round(r)} | {_f(r['requests_per_s'])} | {_f(r['images_per_s'])} | "
                f"{_f(lat['p50'])} | {_f(lat['p95'])} | {_f(lat['p99'])} | {r['failed']} | {r['status_503']} | "
                f"{_f(r['mean_batch_size'], 2) if name == 'batched' else '1 request'} | "
                f"{_server_cpu(r.get('server_cpu_ms_per_request'))} | {_pct(r.get('client_cpu_cores'))} |"
            )
    lines += [
        "",
        "The engine without HTTP (same bundle, point, images and device; no request in flight):",
        "",
        "| batch size | images/s | CPU ms/image | engine | why |",
        "|--:|--:|--:|---|---|",
    ]
    lines += [
        f"| {r['batch_size']}{_round(r)} | {_f(r['images_per_s'])} | {_f(r.get('cpu_ms_per_image'), 2)} | "
        f"{r.get('engine', 'this process')} | {r['why']} |"
        for r in report["in_process"]
    ]
    v = report["targets"]
    if v:
        sp = v["speedup"]
        lines += [
            "",
            f"Targets at {v['clients']} clients{_median_note(sp)}:",
            "",
            f"- batched / naive images/s: **{_f(sp['ratio'], 2)}x**{_spread(sp, 'x')} (target >= {TARGET_SPEEDUP:g}x); p95"
            f"{_in_round(sp)} {_f(sp['batched_p95_ms'])} ms vs naive {_f(sp['naive_p95_ms'])} ms (target: no worse)"
            f"{'' if sp['no_failures'] else '; some requests failed'}: "
            f"**{'met' if sp['met'] else 'not met'}**",
        ]
        if "efficiency" in v:
            e = v["efficiency"]
            engine = f"; {e['engine']}" if e.get("engine") else ""
            lines.append(
                f"- served / in-process images/s at batch {e['batch_size']} ({e['basis']}{engine}): "
                f"**{_f(100 * e['ratio'])}%**{_spread(e, '%')} (target >= {100 * TARGET_EFFICIENCY:g}%): "
                f"**{'met' if e['met'] else 'not met'}**"
            )
    return "\n".join(lines) + "\n"
