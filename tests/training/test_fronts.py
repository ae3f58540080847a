"""The fronts table's choices read validation only; the window keeps degenerate points out."""

from __future__ import annotations

import numpy as np
import pytest

from skipvit.model.bundle import Point
from skipvit.training.fronts import hypervolume, near_static, window_hypervolume


def point(pid, test_acc, compute, val_acc=None, val_compute=None, method="rl"):
    metrics = {"accuracy": test_acc, "mean_layers": 9 * compute, "relative_compute": compute, "split": "test"}
    if val_acc is not None:
        metrics |= {
            "val_accuracy": val_acc,
            "val_relative_compute": val_compute,
            "val_mean_layers": 9 * val_compute,
        }
    return Point(pid, method, "w", {}, metrics)


STATIC = point("static", 0.89, 1.0, 0.90, 1.0, method="static")


def test_near_static_is_chosen_on_validation_not_on_test():
    a = point("a", 0.87, 0.5, val_acc=0.897, val_compute=0.5)  # within 0.5 pt on val, worse on test
    b = point("b", 0.89, 0.3, val_acc=0.890, val_compute=0.3)  # cheaper, as good on test, 1 pt down on val
    c = point("c", 0.95, 0.1)  # no validation figures: takes part in no choice
    assert near_static([a, b, c], STATIC) is a
    assert near_static([b, c], STATIC) is None
    assert near_static([a], point("s", 0.89, 1.0, method="static")) is None  # static without val figures


def test_the_window_ignores_a_degenerate_point_that_the_box_rewards():
    lean = np.array([[0.0, 0.90]])  # no layer run, chance accuracy
    good = np.array([[0.5, 0.12], [0.7, 0.11]])
    assert hypervolume(lean) > hypervolume(good) * 0.1  # the box credits it
    assert window_hypervolume(lean, static_error=0.11) == 0.0
    assert window_hypervolume(good, static_error=0.11) == pytest.approx(hypervolume(good, (1.0, 0.21)))
    assert window_hypervolume(np.concatenate([lean, good]), 0.11) == window_hypervolume(good, 0.11)
