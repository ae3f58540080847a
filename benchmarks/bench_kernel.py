"""`skipvit bench kernel`: row compaction, compact + scatter back, and the syncs of one forward.

Times one compact + scatter round trip of hidden states (B, T, D) (default the shipped model's
T=50, D=96) for several batch sizes and run-mask densities:

- ``torch bool-index``: ``h[mask]`` and ``out[mask] = rows``;
- ``reference``: ``nonzero`` + ``index_select`` + ``index_copy`` (``kernels.reference``, exact);
- ``reference fixed``: the cumsum/searchsorted reference of the fixed-capacity path (capacity B);
- ``triton exact`` and ``triton fixed`` (capacity B): the kernels, on CUDA only.

On CUDA the loop is timed with CUDA events (host syncs inside a method are part of its time);
on CPU with ``perf_counter``, and Triton is left out (its CPU mode is an interpreter for tests).
Then one model forward (``fmnist-9`` architecture, random weights, random RUN/SKIP/EXIT
decisions) is run in exact and in fixed mode and its syncs counted (``kernels.syncs``: the CUDA
sync debug mode on a GPU, host reads of tensor data on CPU).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from skipvit import flags
from skipvit.benchmarks.server_report import machine_info
from skipvit.kernels.reference import (
    compact_rows_fixed_ref,
    compact_rows_ref,
    scatter_rows_fixed_ref,
    scatter_rows_ref,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_arguments(parser) -> None:
    parser.add_argument(
        "--batch-sizes", type=flags.positive_ints, default=[1, 8, 64, 256, 1024], metavar="B1,B2,..."
    )
    parser.add_argument(
        "--densities",
        type=flags.floats,
        default=[0.1, 0.5, 0.9],
        metavar="P1,P2,...",
        help="fraction of rows that run the layer",
    )
    parser.add_argument("--tokens", type=int, default=50, help="T of the hidden state (B, T, D)")
    parser.add_argument("--dim", type=int, default=96, help="D of the hidden state (B, T, D)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed round trips (default 200 GPU, 10 CPU)"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed round trips first")
    parser.add_argument("--model-batch", type=int, default=64, help="batch of the sync-counting forward")
    flags.add_device(parser, "auto", "cpu, cuda or auto")
    flags.add_seed(parser)
    parser.add_argument("--out-json", default="runs/bench/kernel.json")
    parser.add_argument("--out-md", default=None, help="also write the markdown tables here")


# ---- methods: each returns a function doing one compact + scatter round trip


def methods(h: torch.Tensor, mask: torch.Tensor) -> dict[str, Callable[[], Any]]:
    b = h.shape[0]

    def bool_index():
        out = h.clone()
        out[mask] = h[mask]
        return out

    def reference():
        rows, idx = compact_rows_ref(h, mask)
        return scatter_rows_ref(h, idx, rows)

    def reference_fixed():
        rows, idx, _ = compact_rows_fixed_ref(h, mask, b)
        return scatter_rows_fixed_ref(h, idx, rows)

    found = {"torch bool-index": bool_index, "reference": reference, "reference fixed": reference_fixed}
    if h.is_cuda:
        from skipvit.kernels.dispatch import triton_module

        tc = triton_module()
        if tc is not None:

            def triton_exact():
                rows, idx = tc.compact_rows(h, mask)
                return tc.scatter_rows(h, idx, rows)

            def triton_fixed():
                rows, idx, _ = tc.compact_rows_fixed(h, mask, b)
                return tc.scatter_rows_fixed(h, idx, rows)

            found["triton exact"], found["triton fixed"] = triton_exact, triton_fixed
    return found


def time_ms(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> float:
    """Mean milliseconds per call."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / repeats
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) * 1e3 / repeats


def bench_kernels(args, device: torch.device) -> list[dict]:
    gen = torch.Generator().manual_seed(args.seed)
    repeats = args.repeats or (200 if device.type == "cuda" else 10)
    rows = []
    for b in args.batch_sizes:
        h = torch.randn(b, args.tokens, args.dim, generator=gen).to(device, DTYPES[args.dtype])  # (B, T, D)
        for p in args.densities:
            mask = (torch.rand(b, generator=gen) < p).to(device)  # (B,)
            with torch.inference_mode():
                for name, fn in methods(h, mask).items():
                    ms = time_ms(fn, device, repeats, args.warmup)
                    rows.append(
                        {"batch": b, "density": p, "rows_run": int(mask.sum()), "method": name, "ms": ms}
                    )
    return rows


def count_forward_syncs(args, device: torch.device) -> dict:
    from skipvit.kernels.syncs import count_syncs
    from skipvit.model.config import ViTConfig
    from skipvit.model.policy import EXIT, RUN, SKIP, MaskPolicy
    from skipvit.model.vit import PRESETS, build_model

    torch.manual_seed(args.seed)
    cfg = ViTConfig(**PRESETS["fmnist-9"], num_classes=10)
    model = build_model(cfg).eval().to(device)
    b = args.model_batch
    x = torch.randn(b, cfg.in_channels, cfg.image_size, cfg.image_size, device=device)
    u = torch.rand(b, cfg.depth, device=device)
    dec = torch.where(u < 0.6, RUN, torch.where(u < 0.97, SKIP, EXIT)).to(torch.int8)  # on the device
    result: dict[str, Any] = {
        "batch": b,
        "depth": cfg.depth,
        "counted": "CUDA sync debug mode" if device.type == "cuda" else "host reads (CPU)",
    }
    with torch.inference_mode():
        for mode in ("exact", "fixed"):
            model(x, MaskPolicy(dec), compaction=mode)  # warm-up (compiles the kernels on CUDA)
            with count_syncs(device) as syncs:
                model(x, MaskPolicy(dec), compaction=mode)
            ms = time_ms(lambda m=mode: model(x, MaskPolicy(dec), compaction=m), device, 5, 0)
            result[mode] = {"syncs": syncs.count, "ms_per_forward": ms}
    return result


# ---- report


def environment(device: torch.device) -> dict[str, Any]:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else machine_info()["cpu"]
    return {
        "device": device.type,
        "device_name": name,
        "torch": torch.__version__,
        "triton": triton_version,
        "torch_threads": torch.get_num_threads(),
    }


def render_markdown(result: dict) -> str:
    env, rows = result["environment"], result["kernels"]
    names = list(dict.fromkeys(r["method"] for r in rows))
    lines = [
        f"Row compaction round trip (compact + scatter), h = (B, {result['tokens']}, {result['dim']}) "
        f"{result['dtype']}, µs per round trip on {env['device_name']} (torch {env['torch']}, "
        f"triton {env['triton'] or 'not installed'}).",
        "",
        "| B | density | rows run | " + " | ".join(names) + " |",
        "|---:|---:|---:|" + "---:|" * len(names),
    ]
    for key in dict.fromkeys((r["batch"], r["density"]) for r in rows):
        cells = {r["method"]: r for r in rows if (r["batch"], r["density"]) == key}
        first = next(iter(cells.values()))
        timed = " | ".join(f"{cells[n]['ms'] * 1e3:.1f}" if n in cells else "–" for n in names)
        lines.append(f"| {key[0]} | {key[1]:g} | {first['rows_run']} | {timed} |")
    if result.get("note"):
        lines += ["", result["note"]]
    s = result["syncs"]
    lines += [
        "",
        f"Syncs per model forward (fmnist-9, B={s['batch']}, {s['depth']} layers, counted: {s['counted']}):",
        "",
        "| mode | syncs | ms per forward |",
        "|---|---:|---:|",
        f"| exact | {s['exact']['syncs']} | {s['exact']['ms_per_forward']:.2f} |",
        f"| fixed (capacity B) | {s['fixed']['syncs']} | {s['fixed']['ms_per_forward']:.2f} |",
    ]
    return "\n".join(lines) + "\n"


def run(args) -> dict:
    from skipvit.training.device import resolve_device

    device = resolve_device(args.device)
    result: dict[str, Any] = {
        "environment": environment(device),
        "tokens": args.tokens,
        "dim": args.dim,
        "dtype": args.dtype,
        "kernels": bench_kernels(args, device),
        "syncs": count_forward_syncs(args, device),
        "note": None
        if device.type == "cuda"
        else "Triton is timed only on a GPU (on CPU it runs in an interpreter).",
    }
    markdown = render_markdown(result)
    out = Path(args.out_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    if args.out_md:
        Path(args.out_md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out_md).write_text(markdown)
    print(markdown)
    print(f"written to {out}")
    return result
