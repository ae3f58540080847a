"""Intervals and paired tests for accuracies measured on one test split.

Pure functions over counts or per-image correctness; no torch, no I/O.

- ``wilson_interval``: a 95% interval for one accuracy (k correct of n), Wilson's score interval,
  which stays inside [0, 1] and behaves near 0% and 100% where the normal approximation does not.
- ``mcnemar``: two models answered the same n images; only the discordant images (one right, the
  other wrong) say anything about which is better. The exact test: under "no difference" each
  discordant image is a fair coin, so the p-value is a two-sided binomial tail.
- ``paired_difference``: the accuracy difference of two models on the same images with a 95%
  interval that accounts for the pairing (the variance of the per-image difference).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """(low, high) for the accuracy ``correct / n``."""
    if n <= 0 or not 0 <= correct <= n:
        raise ValueError(f"need 0 <= correct <= n and n > 0, got {correct} of {n}")
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == n else min(1.0, centre + half)
    return low, high


def accuracy_ci95(accuracy: float, n: int) -> list[float]:
    """``[low, high]`` of the Wilson interval for an accuracy measured on ``n`` images, rounded as the
    bundle's metrics are (the key ``accuracy_ci95`` of a point's metrics)."""
    low, high = wilson_interval(round(accuracy * n), n)
    return [round(low, 5), round(high, 5)]


@dataclass(frozen=True)
class PairedComparison:
    n: int
    a_only: int  # images model A answered right and model B wrong
    b_only: int  # the other way round
    difference: float  # accuracy(A) - accuracy(B)
    low: float  # 95% interval of the difference
    high: float
    p_value: float  # exact McNemar, two-sided

    @property
    def significant(self) -> bool:
        return self.p_value < 0.05

    def verdict(self, a: str = "A", b: str = "B") -> str:
        if not self.significant:
            return "no significant difference"
        return f"{a} better" if self.difference > 0 else f"{a} worse"


def mcnemar(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts."""
    if a_only < 0 or b_only < 0:
        raise ValueError("discordant counts must be >= 0")
    m = a_only + b_only
    if m == 0:
        return 1.0
    k = min(a_only, b_only)
    tail = sum(math.comb(m, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2**m)


def paired_difference(
    a_correct: Sequence[bool], b_correct: Sequence[bool], z: float = Z95
) -> PairedComparison:
    """Compare two models' per-image correctness on the same images, in the same order."""
    if len(a_correct) != len(b_correct) or not a_correct:
        raise ValueError(f"need two equally long, non-empty lists, got {len(a_correct)} and {len(b_correct)}")
    n = len(a_correct)
    a_only = sum(1 for a, b in zip(a_correct, b_correct, strict=True) if a and not b)
    b_only = sum(1 for a, b in zip(a_correct, b_correct, strict=True) if b and not a)
    diff = (a_only - b_only) / n
    # per-image difference d in {-1, 0, 1}: Var(d) = E[d^2] - E[d]^2
    var = ((a_only + b_only) / n - diff * diff) / n
    half = z * math.sqrt(max(var, 0.0))
    return PairedComparison(n, a_only, b_only, diff, diff - half, diff + half, mcnemar(a_only, b_only))
