"""DyCE (Dynamically Configurable Exiting): the lambda sweep over simulated configurations.

**Cost.** J = lambda·(1 − acc / acc_backbone) + (1 − lambda)·(FLOPs / static FLOPs). The lambdas
are ``lambdas`` values whose odds lambda / (1 − lambda) are log-spaced between those of
``lambda_min`` and ``lambda_max``: the trade-offs that matter sit near lambda = 1.

**Searches**, for every lambda: the one-pass search takes the positions in order and sets each to
its best option given the earlier ones (the later ones off); the circular search starts there
and applies the single change (any position, any option) that lowers J most, until none does.

**Selection.** The configurations found (both searches, every lambda), sorted by validation
compute, are kept while their validation accuracy rises strictly (configurations without exits
left out: that is the static point); at most ``max_points``, evenly spread.

"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from skipvit.training.search.dyce_sim import Choice, Option, Score, Simulator


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


def lambda_grid(n: int, lo: float, hi: float) -> np.ndarray:
    """``n`` lambdas whose odds lambda / (1 - lambda) are log-spaced from ``lo``'s to ``hi``'s."""
    odds = np.logspace(np.log10(lo / (1 - lo)), np.log10(hi / (1 - hi)), n)
    return odds / (1 + odds)


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
