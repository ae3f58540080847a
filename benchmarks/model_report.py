"""The figures, verdict, table and plot of `skipvit bench model`: pure functions of what was measured.

Per (configuration, batch size): images/s (median over rounds), mean layers run, the ideal
speedups (depth / mean layers, and static FLOPs / point FLOPs from ``model.flops``), the achieved
speedup (median over rounds of point images/s / static images/s in the same round), achieved
over ideal, the gates-on overhead (static images/s / gates-on images/s - 1) and peak memory.

Targets for a bundle trained here: at batch >= 64, achieved / ideal (FLOPs) >= 0.85 for every
point and the gates-on overhead <= 5% (on CPU); at batch 1, achieved / ideal (FLOPs) >= 0.6.

Targets where transformers' forward was timed too (an imported model at a real size): ours (static)
>= 1.0x transformers at every batch size; achieved / ideal (FLOPs) >= 0.9 at batch >= 8 for every
row mask; gates-on overhead <= 3% at every batch size.
"""

from __future__ import annotations

import math
from pathlib import Path
from statistics import median
from typing import Any

from skipvit.model.config import ViTConfig
from skipvit.model.flops import block_flops, forward_flops, gate_flops

TARGET_LARGE_BATCH, TARGET_EFFICIENCY_LARGE = 64, 0.85
TARGET_GATES_ON_OVERHEAD = 0.05
TARGET_EFFICIENCY_BATCH1 = 0.60
# an imported model, timed beside transformers
TARGET_VS_REFERENCE = 1.0
TARGET_MASK_BATCH, TARGET_MASK_EFFICIENCY = 8, 0.9
TARGET_GATES_ON_OVERHEAD_IMPORTED = 0.03

MEMORY_MEASURES = {
    "cpu": "peak bytes held by torch's CPU allocator during one forward, above what was held before it "
    "(torch.profiler memory events, 'Total Allocated'): activations, weights excluded",
    "cuda": "torch.cuda.max_memory_allocated during one forward after reset_peak_memory_stats, minus "
    "memory_allocated before it: activations, weights excluded",
}
MEMORY_HEADERS = {"cpu": "peak MiB (torch CPU allocator)", "cuda": "peak MiB (CUDA max allocated)"}


def model_machine_info(device) -> dict[str, Any]:
    """The server benchmark's machine info plus the device the model ran on."""
    import torch

    from skipvit.benchmarks.server_report import machine_info

    info = {**machine_info(), "device": device.type}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def flops_summary(cfg: ViTConfig) -> dict[str, float]:
    static = forward_flops(cfg, cfg.depth)
    return {
        "embed": static.embed,
        "block": block_flops(cfg),
        "gate": gate_flops(cfg),
        "head": static.head,
        "static_total": static.total,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def derive_rows(configs: list[dict], measured: dict, cfg: ViTConfig) -> list[dict]:
    """One row per (batch size, configuration), in batch-size order, static first.

    ``measured[config id][batch size]`` holds ``mean_layers``, ``peak_memory_bytes`` and
    ``rounds`` (one ``{"calls", "seconds", "images_per_s"}`` per round, round r of every
    configuration at one batch size measured within the same round)."""
    static_total = forward_flops(cfg, cfg.depth).total
    sizes = sorted({b for c in configs for b in measured[c["id"]]})
    rows = []
    for b in sizes:
        base = [r["images_per_s"] for r in measured["static"][b]["rounds"]]
        for c in configs:
            m = measured[c["id"]][b]
            ips = [r["images_per_s"] for r in m["rounds"]]
            paired = [p / s for p, s in zip(ips, base, strict=True)]  # per round
            ml = m["mean_layers"]
            flops = forward_flops(cfg, ml, c["gates_per_image"])
            achieved = median(paired)
            ideal_layers = cfg.depth / ml if ml > 0 else None
            ideal_flops = static_total / flops.total
            rows.append(
                {
                    "config": c["id"],
                    "kind": c["kind"],
                    "batch_size": b,
                    "images_per_s": median(ips),
                    "images_per_s_rounds": ips,
                    "calls": sum(r["calls"] for r in m["rounds"]),
                    "seconds": sum(r["seconds"] for r in m["rounds"]),
                    "mean_layers": ml,
                    "gates_per_image": c["gates_per_image"],
                    "flops_per_image": flops.total,
                    "ideal_speedup_layers": ideal_layers,
                    "ideal_speedup_flops": ideal_flops,
                    "achieved_speedup": achieved,
                    "achieved_over_ideal_flops": achieved / ideal_flops,
                    "achieved_over_ideal_layers": _ratio(achieved, ideal_layers),
                    "overhead_vs_static": median(1 / p for p in paired) - 1
                    if c["kind"] == "gates-on"
                    else None,
                    # ours (static) images/s / transformers' images/s, per round
                    "ours_over_reference": median(1 / p for p in paired)
                    if c["kind"] == "reference"
                    else None,
                    "peak_memory_bytes": m["peak_memory_bytes"],
                }
            )
    return rows


def _target(name: str, rows: list[dict], key: str, ok, threshold: float, applies: bool = True) -> dict:
    checked = [
        {
            "config": r["config"],
            "batch_size": r["batch_size"],
            "value": r[key],
            "reached": r[key] is not None and ok(r[key]),
        }
        for r in rows
    ]
    reached = all(c["reached"] for c in checked) if checked and applies else None
    return {
        "name": name,
        "metric": key,
        "threshold": threshold,
        "applies": applies,
        "measured": bool(checked),
        "reached": reached,
        "rows": checked,
    }


def verdict(rows: list[dict], device: str) -> list[dict]:
    """The targets (module docstring): the imported-model ones where transformers was timed, else
    the three for a bundle trained here; ``reached`` is None where a target was not measured or
    does not apply."""
    if any(r["kind"] == "reference" for r in rows):
        return [
            _target(
                f"ours (static) >= {TARGET_VS_REFERENCE:g}x transformers at every batch size",
                [r for r in rows if r["kind"] == "reference"],
                "ours_over_reference",
                lambda v: v >= TARGET_VS_REFERENCE,
                TARGET_VS_REFERENCE,
            ),
            _target(
                f"row masks: achieved / ideal (FLOPs) >= {TARGET_MASK_EFFICIENCY:g} at batch >= {TARGET_MASK_BATCH}",
                [r for r in rows if r["kind"] == "mask" and r["batch_size"] >= TARGET_MASK_BATCH],
                "achieved_over_ideal_flops",
                lambda v: v >= TARGET_MASK_EFFICIENCY,
                TARGET_MASK_EFFICIENCY,
            ),
            _target(
                f"gates-on overhead <= {100 * TARGET_GATES_ON_OVERHEAD_IMPORTED:g}% at every batch size",
                [r for r in rows if r["kind"] == "gates-on"],
                "overhead_vs_static",
                lambda v: v <= TARGET_GATES_ON_OVERHEAD_IMPORTED,
                TARGET_GATES_ON_OVERHEAD_IMPORTED,
            ),
        ]
    points = [r for r in rows if r["kind"] == "point"]
    large = [r for r in points if r["batch_size"] >= TARGET_LARGE_BATCH]
    gates_on = [r for r in rows if r["kind"] == "gates-on" and r["batch_size"] >= TARGET_LARGE_BATCH]
    return [
        _target(
            f"achieved / ideal (FLOPs) >= {TARGET_EFFICIENCY_LARGE:g} at batch >= {TARGET_LARGE_BATCH}",
            large,
            "achieved_over_ideal_flops",
            lambda v: v >= TARGET_EFFICIENCY_LARGE,
            TARGET_EFFICIENCY_LARGE,
        ),
        _target(
            f"gates-on overhead <= {100 * TARGET_GATES_ON_OVERHEAD:g}% at batch >= {TARGET_LARGE_BATCH} "
            "(CPU)",
            gates_on,
            "overhead_vs_static",
            lambda v: v <= TARGET_GATES_ON_OVERHEAD,
            TARGET_GATES_ON_OVERHEAD,
            applies=device == "cpu",
        ),
        _target(
            f"achieved / ideal (FLOPs) >= {TARGET_EFFICIENCY_BATCH1:g} at batch 1",
            [r for r in points if r["batch_size"] == 1],
            "achieved_over_ideal_flops",
            lambda v: v >= TARGET_EFFICIENCY_BATCH1,
            TARGET_EFFICIENCY_BATCH1,
        ),
    ]


# ---- markdown


def _f(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{digits}f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}%"


def _outcome(t: dict) -> str:
    if not t["measured"]:
        return "not measured (no such batch size or configuration in this run)"
    if not t["applies"]:
        return "n/a (a CPU target; this run was on another device)"
    return "reached" if t["reached"] else "not reached"


def _images(data: dict) -> str:
    if data.get("split") is None:
        return f"{data['images']} seeded random images"
    return f"{data['images']} {data['dataset']} {data['split']} images"


def render_markdown(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    dev = m["device"] + (f" ({m['gpu']}, CUDA {m['cuda']})" if m.get("gpu") else "")
    mem_head = MEMORY_HEADERS.get(report["device"], "peak MiB")
    has_ref = any(r["kind"] == "reference" for r in report["rows"])
    ref_head = "ours / transformers | " if has_ref else ""
    lines = [
        f"`{report['command']}`",
        "",
        f"Device {dev}; CPU {m['cpu']}, {m['cores']} cores; torch {m['torch']} ({s['threads']} threads); "
        f"bundle `{report['bundle']}` ({_images(report['data'])}); "
        f"{s['rounds']} rounds; in each, at each batch size, the configurations take turns one forward at a "
        f"time until each has had >= {s['min_seconds']:g} s and >= {s['repeats']} call(s); points: "
        f"{s['points_rule']}. images/s: median over rounds; achieved, gates-on overhead and ours / "
        "transformers: medians of the per-round ratios to static (paired in time), so they need not equal "
        "the ratio of the images/s medians.",
        "",
        f"| batch | config | images/s | mean layers | ideal (depth/layers) | ideal (FLOPs) | achieved | "
        f"achieved/ideal (FLOPs) | achieved/ideal (layers) | gates-on overhead | {ref_head}{mem_head} |",
        "|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|" + ("--:|" if has_ref else "") + "--:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['batch_size']} | {r['config']} | {_f(r['images_per_s'], 1)} | {_f(r['mean_layers'])} | "
            f"{_f(r['ideal_speedup_layers'])} | {_f(r['ideal_speedup_flops'])} | {_f(r['achieved_speedup'])} | "
            f"{_f(r['achieved_over_ideal_flops'])} | {_f(r['achieved_over_ideal_layers'])} | "
            f"{_pct(r['overhead_vs_static']) if r['kind'] == 'gates-on' else ''} | "
            + (f"{_f(r['ours_over_reference']) if r['kind'] == 'reference' else ''} | " if has_ref else "")
            + f"{_f(r['peak_memory_bytes'] / 2**20, 1)} |"
        )
    fl = report["flops_per_image"]
    lines += [
        "",
        f"FLOPs per image (model.flops): embedding {fl['embed']:,.0f}, block {fl['block']:,.0f}, "
        f"gate {fl['gate']:,.0f}, head {fl['head']:,.0f}; static {fl['static_total']:,.0f}. "
        "`gates-on`: every gate evaluated with threshold 0.0, so every row runs every layer "
        "through the compaction path; its overhead is static images/s / gates-on images/s - 1."
        + (
            " `mask-F`: each row runs its own seeded random F of the layers through the compaction "
            "path, no gates."
            if any(r["kind"] == "mask" for r in report["rows"])
            else ""
        )
        + (
            f" `transformers`: transformers' own forward of the static weights (`{s.get('transformers')}`, "
            "SDPA attention); ours / transformers is static images/s / transformers images/s."
            if has_ref
            else ""
        )
        + (
            f" `static-unchunked`: static with each block run on the whole batch; `static` runs a "
            f"block of a large CPU batch in chunks of ~{s.get('cpu_chunk_tokens')} token rows."
            if any(r["kind"] == "unchunked" for r in report["rows"])
            else ""
        ),
        "",
        "Targets:",
        "",
    ]
    for t in report["targets"]:
        worst = ""
        if t["rows"]:
            key = (
                (lambda c: -(c["value"] or 0))
                if t["metric"] == "overhead_vs_static"
                else (lambda c: c["value"] if c["value"] is not None else -math.inf)
            )
            w = min(t["rows"], key=key)
            val = _pct(w["value"]) if t["metric"] == "overhead_vs_static" else _f(w["value"])
            worst = f" (worst: {w['config']} at batch {w['batch_size']}: {val})"
        lines.append(f"- {t['name']}: **{_outcome(t)}**{worst}")
    return "\n".join(lines) + "\n"


# ---- plot


def plot_png(report: dict, path: str | Path) -> None:
    """Achieved vs. ideal speedup, achieved/ideal, and gates-on overhead, against batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.5))
    points = [c["id"] for c in report["configs"] if c["kind"] in ("point", "mask", "reference")]
    imported = any(r["kind"] == "reference" for r in rows)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, pid in enumerate(points):
        rs = [r for r in rows if r["config"] == pid]
        b = [r["batch_size"] for r in rs]
        col = colors[i % len(colors)]
        ax1.plot(b, [r["achieved_speedup"] for r in rs], "o-", color=col, label=f"{pid} achieved")
        ax1.plot(b, [r["ideal_speedup_flops"] for r in rs], "--", color=col, label=f"{pid} ideal (FLOPs)")
        ideal_l = [r["ideal_speedup_layers"] for r in rs]
        if all(v is not None for v in ideal_l):
            ax1.plot(b, ideal_l, ":", color=col, label=f"{pid} ideal (depth/layers)")
        ax2.plot(b, [r["achieved_over_ideal_flops"] for r in rs], "o-", color=col, label=pid)
    ax1.axhline(1.0, color="grey", lw=0.8)
    if imported:
        ax2.axhline(
            TARGET_MASK_EFFICIENCY,
            color="green",
            ls="--",
            lw=0.8,
            label=f"target {TARGET_MASK_EFFICIENCY:g} (masks, batch >= {TARGET_MASK_BATCH})",
        )
    else:
        ax2.axhline(
            TARGET_EFFICIENCY_LARGE,
            color="green",
            ls="--",
            lw=0.8,
            label=f"target {TARGET_EFFICIENCY_LARGE:g} (batch >= {TARGET_LARGE_BATCH})",
        )
        ax2.axhline(
            TARGET_EFFICIENCY_BATCH1,
            color="orange",
            ls="--",
            lw=0.8,
            label=f"target {TARGET_EFFICIENCY_BATCH1:g} (batch 1)",
        )
    on = [r for r in rows if r["kind"] == "gates-on"]
    if on:
        ax3.plot(
            [r["batch_size"] for r in on],
            [100 * r["overhead_vs_static"] for r in on],
            "o-",
            color="k",
            label="gates-on vs static",
        )
    ax3.axhline(
        100 * (TARGET_GATES_ON_OVERHEAD_IMPORTED if imported else TARGET_GATES_ON_OVERHEAD),
        color="green",
        ls="--",
        lw=0.8,
        label=f"target {100 * TARGET_GATES_ON_OVERHEAD_IMPORTED:g}% (every batch)"
        if imported
        else f"target {100 * TARGET_GATES_ON_OVERHEAD:g}% (CPU, batch >= {TARGET_LARGE_BATCH})",
    )
    ax3.axhline(0, color="grey", lw=0.8)
    titles = ("speedup over static", "achieved / ideal (FLOPs)", "gates-on overhead (%)")
    sizes = report["settings"]["batch_sizes"]
    for ax, title in zip((ax1, ax2, ax3), titles, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.minorticks_off()
        ax.set_xlabel("batch size")
        ax.set_title(title)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    m = report["machine"]
    fig.suptitle(
        f"skipvit bench model: {report['bundle']} on {m.get('gpu') or m['cpu']} "
        f"({report['settings']['threads']} threads)",
        fontsize=10,
    )
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
