"""`skipvit search dyce`: DyCE configurations by a lambda sweep (seed 003).

**Record once.** On the validation split (carved from train), one pass of the backbone records,
for every trained exit (position, type), whether its prediction is right and its confidence (max
softmax), plus whether the backbone's own answer is right (``record``). Every configuration is
then scored by simulation on these arrays (``Simulator``), with the accounting of
``model.dyce.flops_by_exit``: a row leaves at the first enabled exit whose confidence exceeds the
threshold; its compute is the embedding, the layers it ran and every enabled head on the way.

**Options.** At each position: no exit, or one type with one threshold from a grid of
``thresholds`` values per exit, midway between neighbouring recorded confidences at evenly spaced
quantiles (so a threshold never sits on a recorded value).

**Cost.** J = lambda·(1 − acc / acc_backbone) + (1 − lambda)·(FLOPs / static FLOPs). The lambdas
are ``lambdas`` values whose odds lambda / (1 − lambda) are log-spaced between those of
``lambda_min`` and ``lambda_max``: the trade-offs that matter sit near lambda = 1.

**Searches**, for every lambda: the one-pass search takes the positions in order and sets each to
its best option given the earlier ones (the later ones off); the circular search starts there
and applies the single change (any position, any option) that lowers J most, until none does.

**Selection.** The configurations found (both searches, every lambda), sorted by validation
compute, are kept while their validation accuracy rises strictly (configurations without exits
left out: that is the static point); at most ``max_points``, evenly spread. Each is then run on the
test split through ``DyCEPolicy`` in the model, so that what is reported is what is served.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from skipvit import flags
from skipvit.model.config import ViTConfig
from skipvit.model.dyce import DyCEConfig, DyCEPolicy, ExitChoice, flops_by_exit, static_flops
from skipvit.model.exits import ExitSet, exit_flops, exits_of
from skipvit.model.flops import block_flops, head_flops, patch_embed_flops
from skipvit.model.vit import AdaptiveViT
from skipvit.training.backbone import backbone_features
from skipvit.training.data.base import ArrayData

Option = tuple[int, int] | None  # (type index, threshold index) at one position, or no exit
Choice = tuple[Option, ...]  # one option per position of the exit set


@dataclass(frozen=True)
class SearchConfig:
    lambdas: int = 41
    lambda_min: float = 0.3
    lambda_max: float = 0.9995
    thresholds: int = 40
    max_rounds: int = 100
    max_points: int = 16

    def __post_init__(self) -> None:
        if not 0 < self.lambda_min <= self.lambda_max < 1 or self.lambdas < 1:
            raise ValueError("need 0 < --lambda-min <= --lambda-max < 1 and --lambdas >= 1")
        if self.thresholds < 1 or self.max_points < 1 or self.max_rounds < 0:
            raise ValueError("--thresholds and --max-points must be >= 1, --max-rounds >= 0")

    def to_dict(self) -> dict:
        return asdict(self)


def lambda_grid(n: int, lo: float, hi: float) -> np.ndarray:
    """``n`` lambdas whose odds lambda / (1 - lambda) are log-spaced from ``lo``'s to ``hi``'s."""
    odds = np.logspace(np.log10(lo / (1 - lo)), np.log10(hi / (1 - hi)), n)
    return odds / (1 + odds)


# ---------------------------------------------------------------- recording


@dataclass
class Recording:
    """What the search needs of one split: per exit (position, type), right or wrong and confidence."""

    positions: list[int]
    types: list[str]
    correct: np.ndarray  # (P, K, N) bool: exit (positions[p], types[k]) is right
    conf: np.ndarray  # (P, K, N) float32: its max softmax
    final_correct: np.ndarray  # (N,) bool: the backbone's head is right

    @property
    def n(self) -> int:
        return len(self.final_correct)


@torch.no_grad()
def record(model: AdaptiveViT, data: ArrayData, mean, std, batch_size: int = 512, device="cpu") -> Recording:
    exits = exits_of(model)
    if exits is None:
        raise ValueError("this weight set has no exit heads; Hint: run `skipvit train exits` first")
    positions, types = exits.positions, exits.types
    feats, final = backbone_features(model, data, mean, std, positions, batch_size, device)  # (N, P, 2, D)
    labels = data.labels
    n = len(labels)
    correct = np.zeros((len(positions), len(types), n), dtype=bool)
    conf = np.zeros((len(positions), len(types), n), dtype=np.float32)
    exits.eval()
    for p, k in enumerate(positions):
        for t, kind in enumerate(types):
            if not exits.has(k, kind):
                conf[p, t] = np.inf  # a missing head never lets a row leave; the search never picks it
                continue
            head = exits.head(k, kind)
            for s in range(0, n, 4096):
                logits = head.from_pooled(feats[s : s + 4096, p].to(device)).float()  # (b, C)
                prob = logits.softmax(-1)
                c, pred = prob.max(-1)
                conf[p, t, s : s + 4096] = c.cpu().numpy()
                correct[p, t, s : s + 4096] = (pred.cpu() == labels[s : s + 4096]).numpy()
    final_correct = (final.argmax(-1) == labels).numpy()
    return Recording(positions, types, correct, conf, final_correct)


def threshold_grid(conf: np.ndarray, count: int) -> np.ndarray:
    """``count`` thresholds (at most) for one exit's confidences (N,): midway between neighbouring
    distinct values, at evenly spaced quantiles from 0 to 0.995 (float32, increasing)."""
    values = np.unique(conf[np.isfinite(conf)])
    if len(values) < 2:
        return np.array([np.float32(values[0]) if len(values) else np.float32(1.0)], dtype=np.float32)
    mids = ((values[:-1].astype(np.float64) + values[1:]) / 2).astype(np.float32)  # (U - 1,)
    sorted_conf = np.sort(conf)
    picks = sorted_conf[(np.linspace(0.0, 0.995, count) * (len(conf) - 1)).astype(int)]
    at = np.clip(np.searchsorted(values, picks), 0, len(mids) - 1)
    return np.unique(mids[at])


# ---------------------------------------------------------------- simulation


@dataclass(frozen=True)
class Score:
    accuracy: float
    flops: float  # mean per row
    mean_layers: float

    def relative(self, static: float) -> float:
        return self.flops / static


class Simulator:
    """Scores configurations on a ``Recording`` without running the model."""

    def __init__(self, rec: Recording, cfg: ViTConfig, thresholds: int) -> None:
        self.rec, self.cfg = rec, cfg
        self.grid = [
            [threshold_grid(rec.conf[p, t], thresholds) for t in range(len(rec.types))]
            for p in range(len(rec.positions))
        ]
        # leave[p][t]: (G, N) bool, row clears threshold g of exit (p, t)
        self.leave = [
            [rec.conf[p, t][None, :] > g[:, None] for t, g in enumerate(row)]
            for p, row in enumerate(self.grid)
        ]
        self.head_cost = [exit_flops(cfg, t) for t in rec.types]
        self.embed, self.block, self.head = patch_embed_flops(cfg), float(block_flops(cfg)), head_flops(cfg)
        self.static = float(self.embed + cfg.depth * self.block + self.head)
        self.backbone_accuracy = float(rec.final_correct.mean())
        missing = [
            np.isinf(rec.conf[p, t, 0]) if rec.n else False
            for p in range(len(rec.positions))
            for t in range(len(rec.types))
        ]
        self.available = ~np.array(missing).reshape(len(rec.positions), len(rec.types))

    def options(self, p: int) -> list[Option]:
        opts: list[Option] = [None]
        for t in range(len(self.rec.types)):
            if self.available[p, t]:
                opts += [(t, g) for g in range(len(self.grid[p][t]))]
        return opts

    def score(self, choice: Choice) -> Score:
        rec, n = self.rec, self.rec.n
        remaining = np.ones(n, dtype=bool)
        right = flops = layers = 0.0
        heads = 0.0  # FLOPs of the enabled heads passed so far
        for p, opt in enumerate(choice):
            if opt is None:
                continue
            t, g = opt
            k = rec.positions[p]
            heads += self.head_cost[t]
            go = remaining & self.leave[p][t][g]  # (N,)
            count = int(go.sum())
            right += int((go & rec.correct[p, t]).sum())
            flops += count * (self.embed + k * self.block + heads)
            layers += count * k
            remaining &= ~go
        rest = int(remaining.sum())
        right += int((remaining & rec.final_correct).sum())
        flops += rest * (self.embed + self.cfg.depth * self.block + heads + self.head)
        layers += rest * self.cfg.depth
        return Score(right / n, flops / n, layers / n)

    def cost(self, s: Score, lam: float) -> float:
        rel_acc = s.accuracy / self.backbone_accuracy if self.backbone_accuracy else s.accuracy
        return lam * (1 - rel_acc) + (1 - lam) * s.flops / self.static

    def config(self, choice: Choice) -> DyCEConfig:
        exits = []
        for p, opt in enumerate(choice):
            if opt is not None:
                t, g = opt
                exits.append(ExitChoice(self.rec.positions[p], self.rec.types[t], float(self.grid[p][t][g])))
        return DyCEConfig(tuple(exits))


# ---------------------------------------------------------------- the two searches


def _key(sim: Simulator, choice: Choice, lam: float) -> tuple[float, float]:
    s = sim.score(choice)
    return sim.cost(s, lam), s.flops  # ties go to the cheaper configuration


def one_pass(sim: Simulator, lam: float) -> Choice:
    """Positions in order; each takes its best option given the earlier ones, the later ones off."""
    choice: list[Option] = [None] * len(sim.rec.positions)
    for p in range(len(choice)):
        best = min(sim.options(p), key=lambda o: _key(sim, (*choice[:p], o, *choice[p + 1 :]), lam))
        choice[p] = best
    return tuple(choice)


def circular(sim: Simulator, lam: float, start: Choice, max_rounds: int) -> tuple[Choice, int]:
    """From ``start``, apply the single best change while it lowers the cost; returns (choice, changes)."""
    choice, current = start, _key(sim, start, lam)
    for rounds in range(max_rounds):
        best, best_key = None, current
        for p in range(len(choice)):
            for o in sim.options(p):
                if o == choice[p]:
                    continue
                cand = (*choice[:p], o, *choice[p + 1 :])
                key = _key(sim, cand, lam)
                if key[0] < best_key[0] - 1e-12 or (
                    abs(key[0] - best_key[0]) <= 1e-12 and key[1] < best_key[1]
                ):
                    best, best_key = cand, key
        if best is None:
            return choice, rounds
        choice, current = best, best_key
    return choice, max_rounds


@dataclass
class SweepResult:
    lambdas: np.ndarray
    rows: list[dict]  # per lambda: the two searches' choices and validation scores
    chosen: list[Choice]  # the kept configurations, by increasing validation compute
    val: list[Score]
    elapsed_s: float


def monotone(items: list[tuple[Choice, Score]]) -> list[tuple[Choice, Score]]:
    """Sorted by compute, kept while accuracy rises strictly (repeats and configurations without
    exits left out)."""
    seen, uniq = set(), []
    for c, s in items:
        if c not in seen and any(o is not None for o in c):
            seen.add(c)
            uniq.append((c, s))
    uniq.sort(key=lambda cs: (cs[1].flops, -cs[1].accuracy))
    kept, best = [], -1.0
    for c, s in uniq:
        if s.accuracy > best:
            kept.append((c, s))
            best = s.accuracy
    return kept


def spread(items: list, most: int) -> list:
    """At most ``most`` of ``items``, evenly spaced, the first and last kept."""
    if len(items) <= most:
        return items
    idx = np.unique(np.round(np.linspace(0, len(items) - 1, most)).astype(int))
    return [items[i] for i in idx]


def sweep(sim: Simulator, cfg: SearchConfig, log=print) -> SweepResult:
    t0 = time.time()
    lambdas = lambda_grid(cfg.lambdas, cfg.lambda_min, cfg.lambda_max)
    rows, found = [], []
    for lam in lambdas:
        first = one_pass(sim, lam)
        final, changes = circular(sim, lam, first, cfg.max_rounds)
        s1, s2 = sim.score(first), sim.score(final)
        rows.append(
            {
                "lambda": float(lam),
                "one_pass": first,
                "one_pass_score": s1,
                "circular": final,
                "circular_score": s2,
                "changes": changes,
            }
        )
        found += [(first, s1), (final, s2)]
        log(
            f"lambda {lam:.4f}: one-pass acc {s1.accuracy:.4f} compute {s1.relative(sim.static):.3f} | "
            f"circular ({changes} changes) acc {s2.accuracy:.4f} compute {s2.relative(sim.static):.3f}"
        )
    kept = spread(monotone(found), cfg.max_points)
    return SweepResult(lambdas, rows, [c for c, _ in kept], [s for _, s in kept], time.time() - t0)


# ---------------------------------------------------------------- the command


def add_arguments(p) -> None:
    p.add_argument("--bundle", required=True, help="bundle to search and write into")
    p.add_argument("--weights", default="dyce", help="weight set with exit heads (default: dyce)")
    p.add_argument("--name", default="dyce", help="point prefix (points <name>-1, <name>-2, ...)")
    p.add_argument("--lambdas", type=int, default=41, help="lambda values in the sweep")
    p.add_argument("--lambda-min", type=float, default=0.3, help="smallest lambda (weight of accuracy)")
    p.add_argument("--lambda-max", type=float, default=0.9995, help="largest lambda")
    p.add_argument("--thresholds", type=int, default=40, help="thresholds per exit (confidence quantiles)")
    p.add_argument("--max-rounds", type=int, default=100, help="circular search: most changes applied")
    p.add_argument("--max-points", type=int, default=16, help="most points written")
    p.add_argument("--batch-size", type=int, default=512)
    flags.add_device(p)
    flags.add_data_dir(p)


def config_from_args(args) -> SearchConfig:
    return SearchConfig(
        lambdas=args.lambdas,
        lambda_min=args.lambda_min,
        lambda_max=args.lambda_max,
        thresholds=args.thresholds,
        max_rounds=args.max_rounds,
        max_points=args.max_points,
    )


@torch.inference_mode()
def measure(
    model: AdaptiveViT, data: ArrayData, mean, std, config: DyCEConfig, batch_size: int, device
) -> dict:
    """Run ``config`` through the model (``DyCEPolicy``): accuracy, mean layers, relative compute."""
    from skipvit.training.evaluate import evaluate

    exits = exits_of(model)
    assert isinstance(exits, ExitSet)
    res = evaluate(model, data, mean, std, DyCEPolicy(exits, config), batch_size, device)
    layers = res.executed.sum(1)  # (N,): a DyCE row runs a prefix, so this is where it was answered
    table = flops_by_exit(model.cfg, config)
    return {
        "accuracy": res.accuracy,
        "mean_layers": res.mean_layers,
        "relative_compute": float(table[layers.numpy()].mean() / static_flops(model.cfg)),
        "n": res.n,
    }


def run(args) -> None:
    from skipvit.model.bundle import load_bundle
    from skipvit.training.data import load_bundle_splits
    from skipvit.training.device import resolve_device

    cfg = config_from_args(args)
    bundle = load_bundle(args.bundle)
    if args.weights not in bundle.weight_sets:
        raise ValueError(
            f"{args.bundle} has no weight set {args.weights!r}; Hint: run `skipvit train exits "
            f"--bundle {args.bundle}` first"
        )
    device = resolve_device(args.device)
    model = bundle.build_model(args.weights, device)
    if exits_of(model) is None:
        raise ValueError(
            f"weight set {args.weights!r} has no exit heads; Hint: run `skipvit train exits` first"
        )
    splits = load_bundle_splits(bundle.dataset, args.data_dir)
    mean, std = bundle.dataset["mean"], bundle.dataset["std"]
    print(f"DyCE search on weights {args.weights!r} of {args.bundle} | {cfg} | device {device}")
    t0 = time.time()
    rec = record(model, splits.val, mean, std, args.batch_size, device)
    sim = Simulator(rec, model.cfg, cfg.thresholds)
    record_s = time.time() - t0
    print(
        f"recorded {len(rec.positions) * len(rec.types)} exits on {rec.n} validation images in {record_s:.0f} s; "
        f"backbone accuracy {sim.backbone_accuracy:.4f}"
    )
    result = sweep(sim, cfg)
    # The choice is made; only now is the test split read, once per chosen configuration.
    configs = [sim.config(c) for c in result.chosen]
    test = [measure(model, splits.test, mean, std, c, args.batch_size, device) for c in configs]
    write_search(
        load_bundle(bundle.root),
        args.name,
        args.weights,
        sim,
        result,
        configs,
        test,
        cfg,
        record_s,
        device,
        args,
    )


def _lambdas_of(result: SweepResult, choice: Choice) -> list[float]:
    return [round(r["lambda"], 5) for r in result.rows if choice in (r["one_pass"], r["circular"])]


def write_search(
    bundle,
    name: str,
    weights: str,
    sim: Simulator,
    result: SweepResult,
    configs: list[DyCEConfig],
    test: list[dict],
    cfg: SearchConfig,
    record_s: float,
    device,
    args,
) -> None:
    """Points ``<name>-1``, ``-2``, ... into ``bundle`` (loaded afresh: another command may have
    written points meanwhile), replacing the earlier DyCE points of that name."""
    from skipvit.model.bundle import Point
    from skipvit.training.fronts import HV_REF, hypervolume, objectives
    from skipvit.training.publish import publish
    from skipvit.training.report import command_line, environment, markdown_table

    points = []
    for i, (choice, config, val, t) in enumerate(zip(result.chosen, configs, result.val, test, strict=True)):
        metrics = {
            "accuracy": round(t["accuracy"], 5),
            "mean_layers": round(t["mean_layers"], 4),
            "relative_compute": round(t["relative_compute"], 4),
            "split": "test",
            "n": t["n"],
            "val_accuracy": round(val.accuracy, 5),
            "val_mean_layers": round(val.mean_layers, 4),
            "val_relative_compute": round(val.relative(sim.static), 4),
        }
        params = {**config.to_params(), "lambdas": _lambdas_of(result, choice)}
        points.append(Point(f"{name}-{i + 1}", "dyce", weights, params, metrics))
    static = next((p for p in bundle.front if p.method == "static"), None)
    best = None
    if static is not None:
        ok = [p for p in points if p.metrics["accuracy"] > static.metrics["accuracy"] - 0.005]
        best = min(ok, key=lambda p: p.metrics["relative_compute"], default=None)
    best_text = (
        f"**{best.id}**: {100 * best.metrics['accuracy']:.2f}% at {100 * best.metrics['relative_compute']:.1f}% of "
        f"the static compute ({100 * (1 - best.metrics['relative_compute']):.1f}% less; static "
        f"{100 * static.metrics['accuracy']:.2f}%)"
        if best and static
        else "none"
    )
    rel = sim.static
    sweep_rows = [
        [
            f"{r['lambda']:.4f}",
            f"{100 * r['one_pass_score'].accuracy:.2f}",
            f"{r['one_pass_score'].relative(rel):.3f}",
            f"{100 * r['circular_score'].accuracy:.2f}",
            f"{r['circular_score'].relative(rel):.3f}",
            r["changes"],
        ]
        for r in result.rows
    ]
    rows = [
        [
            p.id,
            DyCEConfig.from_params(p.params).describe(),
            f"{100 * p.metrics['val_accuracy']:.2f}",
            p.metrics["val_relative_compute"],
            f"{100 * p.metrics['accuracy']:.2f}",
            p.metrics["mean_layers"],
            p.metrics["relative_compute"],
        ]
        for p in points
    ]
    body = f"""
Command: `{command_line(args.argv)}`

- Exits: weight set `{weights}`, types {", ".join(f"`{t}`" for t in sim.rec.types)} after layers
  {", ".join(map(str, sim.rec.positions))}; predictions and confidences recorded once on the
  validation split ({sim.rec.n} images, {record_s:.0f} s; backbone {100 * sim.backbone_accuracy:.2f}%)
- Rule: a row leaves at the first enabled exit whose max softmax exceeds its threshold, else the
  backbone's head answers. Compute = embedding + layers run + every enabled exit head on the way
  (+ the head for rows that never leave), in FLOPs (`model.flops`, `model.exits`), relative to static
- Thresholds: {cfg.thresholds} per exit, midway between recorded confidences at evenly spaced quantiles
- Cost: λ·(1 − acc/acc_backbone) + (1 − λ)·relative compute, {cfg.lambdas} values of λ from
  {cfg.lambda_min} to {cfg.lambda_max} (odds log-spaced); per λ a one-pass search (positions in order)
  then a circular one (best single change while it helps, at most {cfg.max_rounds})
- Selection: all configurations found, kept while validation accuracy rises strictly with validation
  compute, at most {cfg.max_points} evenly spread; each then run on the test split through the model
- Environment: {environment()}, device {device}; sweep {result.elapsed_s:.0f} s

Least compute within 0.5 pt of static on the test split: {best_text}.
Hypervolume (pymoo HV over (relative compute, 1 − accuracy), reference {HV_REF}):
**{hypervolume(objectives(points)):.4f}** on the test split.

{
        markdown_table(
            [
                "point",
                "exits (after:type>threshold)",
                "val acc %",
                "val compute",
                "test acc %",
                "mean layers",
                "relative compute",
            ],
            rows,
        )
    }

Lambda sweep (validation split):

{
        markdown_table(
            ["λ", "one-pass acc %", "one-pass compute", "circular acc %", "circular compute", "changes"],
            sweep_rows,
        )
    }
"""
    ours = f"{name}-"
    publish(
        bundle,
        name,
        lambda *_: body,
        points,
        replaces=lambda p: p.method == "dyce" and p.id.startswith(ours),
        fronts=True,
    )
    print(f"wrote {len(points)} points {name}-1..{len(points)} into {bundle.root}")
    for p in points:
        print(
            f"  {p.id}: test accuracy {100 * p.metrics['accuracy']:.2f}% at {p.metrics['mean_layers']:.3f} "
            f"layers, relative compute {p.metrics['relative_compute']:.4f} (val "
            f"{100 * p.metrics['val_accuracy']:.2f}% at {p.metrics['val_relative_compute']:.4f})"
        )
    print(f"least compute within 0.5 pt of static: {best_text.replace('**', '')}")
