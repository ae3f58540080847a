"""front.png's lines: a search's points join within their weight set, a sweep's across them."""

from __future__ import annotations

from skipvit.model.bundle import Point
from skipvit.training.plots import _lines


def _p(pid: str, weights: str) -> Point:
    return Point(pid, "nsga", weights, {}, {"accuracy": 0.5, "mean_layers": 2.0, "relative_compute": 0.5})


def test_each_searched_weight_set_is_its_own_line_and_single_runs_share_one():
    pts = [_p("a-1", "a"), _p("b-1", "b"), _p("a-2", "a"), _p("r1", "r1"), _p("r2", "r2"), _p("b-2", "b")]
    lines = [[p.id for p in line] for line in _lines(pts)]
    assert lines == [["a-1", "a-2"], ["b-1", "b-2"], ["r1", "r2"]]
    assert _lines([]) == [] and [[p.id for p in g] for g in _lines(pts[3:5])] == [["r1", "r2"]]
