"""`skipvit bench model`: the model alone, static vs. operating points, at several batch sizes.

One run, every figure measured in it, on real test images of the bundle's dataset (or, with
``--images random``, seeded random images of its input size: an imported model with random weights):

- configurations: ``static`` (the static point: every row runs every layer, no gates, no
  compaction), ``gates-on`` (the gated path of the first gated point's weights with every
  threshold 0.0: p >= 0 always, so every row runs every layer, but every gate is evaluated and
  the compaction path is taken; fresh gates on the static weights where the bundle has none and
  masks or transformers are timed) and each requested point (``policy_for``, as the service runs
  it); with ``--masks 2/3,1/2``, ``mask-F``: each row runs its own seeded random F of the layers
  (``RowMasks``), the skipping of a dynamic point with a known ideal; with ``--transformers DIR``,
  ``transformers``: transformers' own forward (SDPA attention) of the model the bundle was
  imported from;
- warm-up: every configuration runs a few untimed forwards at every batch size;
- timing: ``--rounds`` rounds; in each round the batch sizes come in a freshly shuffled order
  (seeded), and at each batch size the configurations take turns one forward at a time, in a
  freshly shuffled order every turn, until each has had about ``--min-seconds`` (and at least
  ``--repeats`` forwards), under ``torch.inference_mode()``. Interleaving single forwards puts
  every configuration in the same seconds, so the drift of a shared machine (measured here: +-15%
  between consecutive seconds) hits them alike; images/s is the median over rounds, and the
  ratios (achieved speedup, gates-on overhead, ours / transformers) are medians of the per-round
  ratios; a configuration cycles through the batches of the first ``--limit`` test images,
  continuing where it last stopped;
- mean layers: after timing, from ``ForwardOutput.executed`` on exactly the images timed, each
  weighted by how often it was timed (one more untimed forward per distinct batch);
- memory: after timing, one more forward per (configuration, batch size): on CUDA the peak of
  ``torch.cuda.max_memory_allocated`` above what was allocated before; on CPU the peak of the
  bytes torch's CPU allocator held during the forward, from ``torch.profiler``'s memory events
  ("Total Allocated"). Either way: the activation memory of one forward, weights excluded.

Figures are derived, judged and drawn in ``benchmarks.model_report``; FLOPs in ``model.flops``.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from skipvit import flags
from skipvit.benchmarks.model_report import (
    MEMORY_MEASURES,
    derive_rows,
    flops_summary,
    model_machine_info,
    plot_png,
    render_markdown,
    verdict,
)
from skipvit.model.bundle import Bundle, Point, load_bundle
from skipvit.model.gates import GatePolicy, SkipAgent
from skipvit.model.points import GATE_METHODS, policy_for
from skipvit.model.policy import ExecutionPolicy, StaticPolicy
from skipvit.model.vit import AdaptiveViT, ForwardOutput
from skipvit.training.fronts import near_static

NSGA_METHODS = ("nsga", "nsga-joint")
AUTO_MAX_ACCURACY_DROP = 0.05  # --points auto: the leanest nsga point within 5 points of static


@dataclass
class Config:
    id: str
    kind: str  # "static" | "gates-on" | "point" | "mask" | "reference" | "unchunked"
    weights: str
    model: AdaptiveViT
    make_policy: Callable[[], ExecutionPolicy | None]
    gates_per_image: int  # gate evaluations per row: GatePolicy evaluates every layer's gate
    point: Point | None = None

    def meta(self) -> dict:
        p = self.point
        return {
            "id": self.id,
            "kind": self.kind,
            "weights": self.weights,
            "point": p.id if p else None,
            "method": p.method if p else None,
            "params": p.params if p else None,
            "gates_per_image": self.gates_per_image,
            "bundle_metrics": p.metrics if p else None,
        }


# ---- what to run


class RowMasks(ExecutionPolicy):
    """Each row runs its own random ``k`` of the ``depth`` layers and skips the rest (seeded, the
    same masks for every forward of one batch size): the per-row skipping a dynamic point does,
    through the same compaction path, with the layer count fixed so that the ideal speedup is
    known (depth / k, before the embedding and head)."""

    def __init__(self, depth: int, k: int, seed: int = 0) -> None:
        self.depth, self.k, self.seed = depth, k, seed
        self._masks: dict[int, torch.Tensor] = {}
        self._runs: torch.Tensor | None = None

    @property
    def may_exit(self) -> bool:
        return False

    def masks(self, batch: int) -> torch.Tensor:  # (B, L) bool, exactly k True per row
        if batch not in self._masks:
            g = torch.Generator().manual_seed(self.seed + batch)
            order = torch.rand(batch, self.depth, generator=g).argsort(dim=1)  # (B, L)
            self._masks[batch] = order < self.k
        return self._masks[batch]

    def begin(self, h: torch.Tensor) -> None:
        self._runs = self.masks(h.shape[0]).to(h.device)

    def decide(self, layer: int, h: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
        from skipvit.model.policy import RUN, SKIP

        return torch.where(self.run_mask(layer, h, alive), RUN, SKIP).to(torch.int8)

    def run_mask(self, layer: int, h: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
        return self._runs[:, layer]


def parse_masks(spec: str, depth: int) -> list[tuple[str, int]]:
    """``"2/3,1/2"`` -> [("mask-2/3", 8), ("mask-1/2", 6)] for depth 12: the layers each row runs."""
    out = []
    for part in (s.strip() for s in spec.split(",") if s.strip()):
        num, _, den = part.partition("/")
        try:
            frac = float(num) / float(den or 1)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"--masks {spec!r}: expected fractions like 2/3,1/2") from None
        k = round(frac * depth)
        if not 1 <= k <= depth:
            raise ValueError(f"--masks {spec!r}: {part} of {depth} layers is {k}; expected 1..{depth}")
        out.append((f"mask-{part}", k))
    return out


class Reference:
    """transformers' own forward of the same weights, called as ``AdaptiveViT`` is: every row runs
    every layer (``executed`` all True), for the mean-layer and memory measurements."""

    def __init__(self, hf_model, depth: int) -> None:
        self.hf, self.depth = hf_model, depth

    def __call__(self, x: torch.Tensor, policy=None) -> ForwardOutput:
        logits = self.hf(pixel_values=x).logits
        b = x.shape[0]
        return ForwardOutput(
            logits=logits,
            executed=torch.ones(b, self.depth, dtype=torch.bool),
            exit_layer=torch.full((b,), self.depth, dtype=torch.long),
        )


def accuracy_of(p: Point, default: float | None = None) -> float:
    """A point's validation accuracy where it has one (choices read validation), else its accuracy."""
    m = p.metrics
    return m.get("val_accuracy", m.get("accuracy", default))


def rl_pick(bundle: Bundle) -> Point | None:
    """The bundle's RL point: the one named `rl`, else the one validation picks (least validation
    compute within 0.5 pt of static on validation), else the first RL point."""
    rl = [p for p in bundle.front if p.method == "rl"]
    named = [p for p in rl if p.id == "rl"]
    if named:
        return named[0]
    static = next((p for p in bundle.front if p.method == "static"), None)
    return near_static(rl, static) or (rl[0] if rl else None)


def choose_points(bundle: Bundle, spec: str, allow_none: bool = False) -> tuple[list[Point], str]:
    """The points to compare with static, and the rule that chose them; with ``allow_none`` (masks
    or a reference are timed), a bundle with no other point gives none instead of an error."""
    others = [p for p in bundle.front if p.method != "static"]
    if not others and allow_none and spec in ("auto", "all"):
        return [], "none: the bundle has no point besides static"
    if spec == "all":
        return others, "all"
    if spec != "auto":
        ids = list(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
        given = [bundle.point(i) for i in ids]
        if not given or any(p.method == "static" for p in given):
            raise ValueError(
                f"--points {spec!r}: name points other than static (static is always measured); "
                "Hint: e.g. --points rl, or auto, or all"
            )
        return given, "given"
    rl = rl_pick(bundle)
    chosen = [rl] if rl is not None else []
    static = next((p for p in bundle.front if p.method == "static"), None)
    floor = None
    if static is not None and "accuracy" in static.metrics:
        floor = accuracy_of(static) - AUTO_MAX_ACCURACY_DROP
    nsga = [
        p
        for p in others
        if p.method in NSGA_METHODS
        and "mean_layers" in p.metrics
        and (floor is None or accuracy_of(p, -1.0) >= floor)
    ]
    if nsga:
        chosen.append(min(nsga, key=lambda p: p.metrics["mean_layers"]))
    if not chosen:
        chosen = others[:1]
    if not chosen:
        raise ValueError(f"{bundle.root} has no point besides static; Hint: train rl or run a search first")
    rule = (
        "auto: the RL point (`rl`, else the one of least validation compute within 0.5 pt of static "
        f"on validation, else the first) and the {'/'.join(NSGA_METHODS)} point with the fewest mean "
        f"layers whose accuracy is within {100 * AUTO_MAX_ACCURACY_DROP:g} points of static "
        "(validation figures where the points have them)"
    )
    return chosen, rule


def build_configs(
    bundle: Bundle,
    points: list[Point],
    device: torch.device,
    masks: list[tuple[str, int]] = (),
    reference: str | None = None,
    unchunked: bool = False,
) -> list[Config]:
    """static, gates-on (the first gated point's gates, else fresh gates on the static weights,
    where masks or a reference are asked for: gate cost does not depend on the weights), each
    point, each row mask, and transformers' forward of the static weights (``reference``: the
    save_pretrained directory); with ``unchunked``, static again with each block run on the whole
    batch (``AdaptiveViT.cpu_chunk_tokens`` off), to show what the CPU chunking gives."""
    models: dict[str, AdaptiveViT] = {}

    def model(weights: str) -> AdaptiveViT:
        if weights not in models:
            models[weights] = bundle.build_model(weights, device)
        return models[weights]

    static_point = next((p for p in bundle.front if p.method == "static"), None)
    weights = static_point.weights if static_point else points[0].weights
    configs = [Config("static", "static", weights, model(weights), StaticPolicy, 0, static_point)]
    gated = [p for p in points if p.method in GATE_METHODS]
    if gated:
        m = model(gated[0].weights)
        if m.agent is None:
            raise ValueError(
                f"point {gated[0].id!r} needs RL gates, but weight set {gated[0].weights!r} has none"
            )
        configs.append(
            Config("gates-on", "gates-on", gated[0].weights, m, lambda m=m: GatePolicy(m.agent, 0.0), m.depth)
        )
    elif masks or reference:
        m = bundle.build_model(weights, device)  # its own copy: the static one keeps no agent
        torch.manual_seed(0)
        m.attach_agent(SkipAgent(m.cfg.dim, m.depth).to(device).eval())
        configs.append(
            Config(
                "gates-on",
                "gates-on",
                f"{weights} + fresh gates",
                m,
                lambda m=m: GatePolicy(m.agent, 0.0),
                m.depth,
            )
        )
    for p in points:
        m = model(p.weights)
        policy_for(p, m)  # refuse a method this version cannot run before anything is timed
        gates = m.depth if p.method in GATE_METHODS else 0
        configs.append(Config(p.id, "point", p.weights, m, lambda p=p, m=m: policy_for(p, m), gates, p))
    if unchunked:
        m = bundle.build_model(weights, device)
        m.cpu_chunk_tokens = None
        configs.append(Config("static-unchunked", "unchunked", weights, m, StaticPolicy, 0, static_point))
    for name, k in masks:
        m = model(weights)
        rows = RowMasks(m.depth, k)
        configs.append(Config(name, "mask", weights, m, lambda rows=rows: rows, 0))
    if reference is not None:
        from skipvit.training.hf.reference import load_reference

        hf = load_reference(reference, attention="sdpa").to(device)
        configs.append(
            Config("transformers", "reference", weights, Reference(hf, model(weights).depth), StaticPolicy, 0)
        )
    return configs


def load_test_images(
    bundle: Bundle, data_dir: str | None, limit: int, device: torch.device, images: str = "test"
) -> torch.Tensor:
    """The first ``limit`` test images of the bundle's dataset, normalised as the bundle expects;
    or (``images="random"``) ``limit`` seeded random uint8 images of the bundle's input size, for
    a bundle with no dataset here (an imported model timed with random weights)."""
    from skipvit.training.data.augment import to_float

    ds = bundle.dataset
    if images == "random":
        cfg = bundle.architecture
        g = torch.Generator().manual_seed(0)
        shape = (limit, cfg.in_channels, cfg.image_size, cfg.image_size)
        raw = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
        return to_float(raw, ds["mean"], ds["std"]).to(device)
    from skipvit.training.data import load_bundle_splits

    test = load_bundle_splits(ds, data_dir).test.head(limit)
    return to_float(test.images, ds["mean"], ds["std"]).to(device)  # (N, C, H, W)


def batches_of(x: torch.Tensor, b: int) -> list[torch.Tensor]:
    """ceil(N / b) batches of ``b`` rows that cover every image, wrapping around at the end."""
    n = x.shape[0]
    k = -(-n // b)
    idx = torch.arange(k * b) % n  # (k * b,)
    return [x[idx[i * b : (i + 1) * b].to(x.device)] for i in range(k)]  # each (b, C, H, W)


# ---- measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(
    cfg: Config,
    batches: list[torch.Tensor],
    start: int,
    min_seconds: float,
    repeats: int,
    device: torch.device,
) -> tuple[int, float]:
    """Back-to-back forwards over ``batches`` from index ``start`` until both bounds are met."""
    _sync(device)
    calls, t0 = 0, time.perf_counter()
    while True:
        cfg.model(batches[(start + calls) % len(batches)], cfg.make_policy())
        calls += 1
        if calls >= repeats and time.perf_counter() - t0 >= min_seconds:
            break
    _sync(device)
    return calls, time.perf_counter() - t0


def interleaved(
    configs: list[Config],
    batches: list[torch.Tensor],
    cursor: dict,
    b: int,
    min_seconds: float,
    repeats: int,
    device: torch.device,
    rng: random.Random,
) -> dict[str, tuple[int, float]]:
    """{config id: (forwards, seconds)}: the configurations take turns, one forward each in a
    shuffled order per turn, until each has had ``min_seconds`` and ``repeats`` forwards; each
    forward starts at the batch after the one it ran last (``cursor``, per config and batch size)."""
    took = {c.id: [0, 0.0] for c in configs}
    order = list(configs)
    while not all(n >= repeats and s >= min_seconds for n, s in took.values()):
        rng.shuffle(order)
        for c in order:
            x = batches[cursor[c.id, b] % len(batches)]
            _sync(device)
            t0 = time.perf_counter()
            c.model(x, c.make_policy())
            _sync(device)
            took[c.id][1] += time.perf_counter() - t0
            took[c.id][0] += 1
            cursor[c.id, b] += 1
    return {k: (n, s) for k, (n, s) in took.items()}


def mean_layers(cfg: Config, batches: list[torch.Tensor], calls: int | None = None) -> float:
    """Mean layers run per image over the first ``calls`` forwards of a measurement that cycles
    through ``batches`` from index 0 (every batch once if ``calls`` is None): exactly the images
    timed, each weighted by how often it was timed."""
    k = len(batches)
    calls = k if calls is None else calls
    runs, rows = 0, 0
    for i, x in enumerate(batches[: min(calls, k)]):
        times = calls // k + (1 if i < calls % k else 0)
        out = cfg.model(x, cfg.make_policy())
        runs += times * int(out.executed.sum())
        rows += times * out.executed.shape[0]
    return runs / rows


@contextmanager
def _stderr_to(path: Path):
    """Send fd 2 to ``path`` (torch's profiler prints start/stop lines there from C++)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "wb") as f:
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory(cfg: Config, x: torch.Tensor, device: torch.device) -> int:
    """Peak bytes allocated during one forward, above what was allocated before it."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        cfg.model(x, cfg.make_policy())
        _sync(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    from torch.profiler import ProfilerActivity, profile

    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "stderr"
        try:
            with _stderr_to(log), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                cfg.model(x, cfg.make_policy())
            trace = Path(tmp) / "trace.json"
            prof.export_chrome_trace(str(trace))
            events = json.loads(trace.read_text())["traceEvents"]
        except Exception:
            print(log.read_text(errors="replace"), file=sys.stderr)
            raise
    totals = [
        e["args"]["Total Allocated"]
        for e in events
        if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type") == 0
    ]
    return int(max(totals, default=0))


def measure(configs: list[Config], x: torch.Tensor, args, device: torch.device) -> dict:
    """{config id: {batch size: {"mean_layers", "rounds": [{"calls", "seconds"}], "peak_memory_bytes"}}}"""
    sizes = list(args.batch_sizes)
    batches = {b: batches_of(x, b) for b in sizes}
    out: dict = {c.id: {b: {"rounds": []} for b in sizes} for c in configs}
    t0 = time.perf_counter()
    for b in sizes:  # warm-up: a few untimed forwards of every configuration at every batch size
        for c in configs:
            timed(c, batches[b], 0, min(args.min_seconds, 0.1), 2, device)
    _log(f"warm-up: {time.perf_counter() - t0:.1f} s")
    rng = random.Random(0)
    cursor = {(c.id, b): 0 for c in configs for b in sizes}
    for r in range(args.rounds):
        t_round = time.perf_counter()
        for b in rng.sample(sizes, len(sizes)):
            took = interleaved(configs, batches[b], cursor, b, args.min_seconds, args.repeats, device, rng)
            for c in configs:
                calls, seconds = took[c.id]
                out[c.id][b]["rounds"].append(
                    {"calls": calls, "seconds": seconds, "images_per_s": calls * b / seconds}
                )
        _log(f"round {r + 1}/{args.rounds}: {time.perf_counter() - t_round:.1f} s")
    t0 = time.perf_counter()
    for b in sizes:
        for c in configs:
            out[c.id][b]["mean_layers"] = mean_layers(c, batches[b], cursor[c.id, b])
            out[c.id][b]["peak_memory_bytes"] = peak_memory(c, batches[b][0], device)
    _log(f"mean layers and peak memory: {time.perf_counter() - t0:.1f} s")
    return out


def _log(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


# ---- the command


def _check(args) -> None:
    if args.rounds < 1 or args.repeats < 1 or args.min_seconds < 0 or args.limit < 1:
        raise ValueError(
            "--rounds, --repeats and --limit must be >= 1 and --min-seconds >= 0; "
            "Hint: e.g. --rounds 5 --min-seconds 0.3"
        )
    if args.threads is not None and args.threads < 1:
        raise ValueError("--threads must be >= 1")


def add_arguments(p) -> None:
    p.add_argument("--bundle", default="checkpoints/fashion-mnist", help="bundle to time")
    p.add_argument(
        "--points",
        default="auto",
        help="comma-separated point ids, 'all', or 'auto' (default: rl and the leanest nsga point "
        "within 5 accuracy points of static)",
    )
    p.add_argument(
        "--batch-sizes",
        type=flags.positive_ints,
        default=[1, 8, 64, 256, 1024],
        metavar="B1,B2,...",
        help="batch sizes (default 1,8,64,256,1024)",
    )
    flags.add_device(p, "cpu", "cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--rounds", type=int, default=7, help="rounds over all configurations (median reported)")
    p.add_argument("--min-seconds", type=float, default=0.25, help="timed seconds per measurement")
    p.add_argument("--repeats", type=int, default=1, help="at least this many calls per measurement")
    p.add_argument("--limit", type=int, default=1024, help="first N test images used")
    flags.add_data_dir(p, "dataset directory (default: the dataset's own)")
    p.add_argument(
        "--images",
        choices=("test", "random"),
        default="test",
        help="test: the bundle dataset's test images; random: seeded random images of the model's "
        "input size (an imported model timed with random weights)",
    )
    p.add_argument(
        "--masks",
        default="",
        metavar="F1,F2,...",
        help="also time rows that each run a random fraction of the layers, e.g. 2/3,1/2 (compaction "
        "path, no gates; ideal speedup known)",
    )
    p.add_argument(
        "--transformers",
        default=None,
        metavar="DIR",
        help="also time transformers' own forward (SDPA attention) of the save_pretrained model in DIR, "
        "the one the bundle was imported from (the hf extra)",
    )
    p.add_argument(
        "--unchunked",
        action="store_true",
        help="also time static with each block run on the whole batch (no CPU chunking)",
    )
    p.add_argument("--out-json", default="runs/bench/model.json")
    p.add_argument("--out-md", default=None, help="also write the markdown table here")
    p.add_argument("--out-png", default=None, help="the plot (default: next to the JSON, .png)")


def run(args) -> None:
    from skipvit.training.device import resolve_device

    _check(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    bundle = load_bundle(args.bundle)
    masks = parse_masks(args.masks, bundle.architecture.depth)
    points, rule = choose_points(bundle, args.points, allow_none=bool(masks or args.transformers))
    configs = build_configs(bundle, points, device, masks, args.transformers, args.unchunked)
    x = load_test_images(bundle, args.data_dir, args.limit, device, args.images)
    cfg = bundle.architecture
    _log(
        f"{len(configs)} configurations ({', '.join(c.id for c in configs)}) x batch sizes "
        f"{','.join(map(str, args.batch_sizes))} on {x.shape[0]} {args.images} images, {device.type}"
    )
    with torch.inference_mode():
        measured = measure(configs, x, args, device)
    metas = [c.meta() for c in configs]
    settings = {
        "batch_sizes": list(args.batch_sizes),
        "rounds": args.rounds,
        "min_seconds": args.min_seconds,
        "repeats": args.repeats,
        "limit": args.limit,
        "threads": torch.get_num_threads(),
        "points": args.points,
        "points_rule": rule,
        "masks": [{"id": name, "layers": k} for name, k in masks],
        "transformers": args.transformers,
        "images": args.images,
        "cpu_chunk_tokens": configs[0].model.cpu_chunk_tokens,
        "compaction": getattr(configs[0].model, "compaction", "exact"),
    }
    report = {
        "command": shlex.join(["skipvit", *getattr(args, "argv", [])]),
        "machine": model_machine_info(device),
        "bundle": str(args.bundle),
        "device": device.type,
        "settings": settings,
        "data": {
            "dataset": bundle.dataset["name"] if args.images == "test" else "random",
            "split": "test" if args.images == "test" else None,
            "images": int(x.shape[0]),
        },
        "method": {
            "timing": "warm-up (a few untimed forwards per configuration and batch size), then rounds; "
            "each round shuffles the batch sizes (seeded); at each, the configurations take turns one "
            "forward at a time (order shuffled every turn) until each has had min_seconds (>= repeats "
            "forwards) under torch.inference_mode(), cycling through the batches; images/s = median "
            "over rounds",
            "mean_layers": "ForwardOutput.executed on exactly the images timed, weighted by times timed",
            "ratios": "achieved speedup, gates-on overhead and ours / transformers are medians over "
            "rounds of per-round ratios against static at the same batch size",
            "masks": "mask-F: each row runs its own seeded random round(F x depth) layers through the "
            "compaction path, no gates",
            "memory": MEMORY_MEASURES[device.type],
            "flops": "model.flops: 2 x multiply-adds of the patch embedding, the blocks run, the gates "
            "evaluated and the head; norms, softmax, GELU, biases and compaction not counted",
        },
        "flops_per_image": flops_summary(cfg),
        "configs": metas,
        "rows": derive_rows(metas, measured, cfg),
    }
    report["targets"] = verdict(report["rows"], device.type)
    markdown = render_markdown(report)
    out_json = Path(args.out_json)
    out_png = Path(args.out_png) if args.out_png else out_json.with_suffix(".png")
    out_json.parent.mkdir(parents=True, exist_ok=True)
    report["png"] = str(out_png)
    out_json.write_text(json.dumps(report, indent=2) + "\n")
    plot_png(report, out_png)
    if args.out_md:
        Path(args.out_md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out_md).write_text(markdown)
    print(markdown)
    print(
        f"written to {out_json}, {out_png}" + (f" and {args.out_md}" if args.out_md else ""), file=sys.stderr
    )
