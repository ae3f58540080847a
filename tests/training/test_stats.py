"""Intervals and the paired test, against values computed by hand or by textbook formulas."""

from __future__ import annotations

import math

import pytest

from skipvit.training.stats import accuracy_ci95, mcnemar, paired_difference, wilson_interval


def test_wilson_interval_known_values():
    low, high = wilson_interval(8929, 10000)
    assert low == pytest.approx(0.8867, abs=1e-4) and high == pytest.approx(0.8988, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(10, 10)[0] == pytest.approx(0.7225, abs=1e-4)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_mcnemar_exact_binomial_tail():
    assert mcnemar(0, 0) == 1.0
    assert mcnemar(5, 5) == 1.0
    assert mcnemar(0, 6) == pytest.approx(2 / 64)
    assert mcnemar(1, 9) == pytest.approx(2 * (1 + 10) / 1024)
    assert mcnemar(9, 1) == mcnemar(1, 9)
    big = mcnemar(120, 80)  # normal approximation with continuity correction: p ~ 0.0057
    z = (abs(120 - 80) - 1) / math.sqrt(200)
    assert big == pytest.approx(math.erfc(z / math.sqrt(2)), rel=0.15)


def test_paired_difference_counts_only_discordant_images():
    a = [True] * 90 + [False] * 10
    b = [True] * 80 + [False] * 20  # a right on 10 images b gets wrong, never the other way
    cmp = paired_difference(a, b)
    assert (cmp.a_only, cmp.b_only, cmp.n) == (10, 0, 100)
    assert cmp.difference == pytest.approx(0.1)
    assert cmp.low < 0.1 < cmp.high and cmp.low > 0
    assert cmp.significant and cmp.verdict("dynamic", "static") == "dynamic better"
    same = paired_difference(a, a)
    assert same.difference == 0 and same.p_value == 1.0 and same.verdict() == "no significant difference"
    with pytest.raises(ValueError):
        paired_difference(a, b[:-1])


def test_accuracy_ci95_is_the_rounded_wilson_interval_of_the_count():
    assert accuracy_ci95(0.8929, 10000) == [0.88669, 0.89881]
    assert accuracy_ci95(1.0, 10) == [0.72247, 1.0]
