"""`skipvit search dyce`: simulation, the two searches, monotone selection, and what it writes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from skipvit.model.bundle import load_bundle
from skipvit.model.dyce import DyCEConfig
from skipvit.training.data import load_bundle_splits, load_dataset
from skipvit.training.evaluate_bundle import evaluate_bundle
from skipvit.training.search.dyce import calibration_split, measure
from skipvit.training.search.dyce_sim import Recording, Score, Simulator, record, threshold_grid
from skipvit.training.search.dyce_sweep import circular, lambda_grid, monotone, one_pass, spread


def test_lambda_grid_spans_the_range_in_order():
    lam = lambda_grid(9, 0.3, 0.9995)
    assert lam[0] == pytest.approx(0.3) and lam[-1] == pytest.approx(0.9995)
    assert np.all(np.diff(lam) > 0) and len(lambda_grid(1, 0.5, 0.5)) == 1


def test_thresholds_sit_between_recorded_confidences():
    conf = np.random.default_rng(0).uniform(0.3, 1.0, 500).astype(np.float32)
    grid = threshold_grid(conf, 20)
    assert grid.dtype == np.float32 and 1 < len(grid) <= 20 and np.all(np.diff(grid) > 0)
    assert not np.isin(grid, conf).any()
    assert grid[0] < np.quantile(conf, 0.01) and grid[-1] > np.quantile(conf, 0.98)


def test_monotone_keeps_configurations_whose_accuracy_rises_strictly_with_compute():
    a, b, c, d, e, none = (
        ((0, 0), None),
        ((0, 1), None),
        ((0, 2), None),
        (None, (0, 0)),
        (None, (0, 1)),
        (None, None),
    )
    items = [
        (c, Score(0.80, 50.0, 2)),
        (a, Score(0.60, 10.0, 1)),
        (b, Score(0.60, 20.0, 1)),
        (d, Score(0.85, 40.0, 2)),
        (e, Score(0.90, 70.0, 3)),
        (a, Score(0.60, 10.0, 1)),
        (none, Score(0.95, 100.0, 4)),
    ]
    kept = monotone(items)
    assert [ch for ch, _ in kept] == [a, d, e]  # b: same accuracy, more compute; c: d is cheaper and better
    acc = [s.accuracy for _, s in kept]
    flops = [s.flops for _, s in kept]
    assert all(x < y for x, y in itertools.pairwise(acc)) and all(x < y for x, y in itertools.pairwise(flops))
    assert spread(list(range(10)), 4) == [0, 3, 6, 9] and spread([1, 2], 5) == [1, 2]


def _recording(n: int = 400, seed: int = 0) -> Recording:
    """Two positions (after layers 1 and 2 of the tiny 4-layer model), two types. The exits are right
    exactly where they are confident, so cheap exits with the right thresholds lose nothing."""
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.3, 1.0, size=(2, 2, n)).astype(np.float32)
    correct = conf > np.array([0.8, 0.7, 0.6, 0.9]).reshape(2, 2, 1)
    final = rng.uniform(size=n) < 0.9
    return Recording([1, 2], ["linear", "mlp-s"], correct, conf, final)


def test_simulation_follows_the_exit_rule(tiny_cfg):
    rec = _recording()
    sim = Simulator(rec, tiny_cfg, thresholds=8)
    choice = ((0, 3), (1, 5))
    t1, t2 = sim.grid[0][0][3], sim.grid[1][1][5]
    leave1 = rec.conf[0, 0] > t1
    leave2 = ~leave1 & (rec.conf[1, 1] > t2)
    rest = ~leave1 & ~leave2
    right = (leave1 & rec.correct[0, 0]) | (leave2 & rec.correct[1, 1]) | (rest & rec.final_correct)
    table = [
        0,
        sim.embed + sim.block + sim.head_cost[0],
        sim.embed + 2 * sim.block + sum(sim.head_cost),
        0,
        sim.embed + 4 * sim.block + sum(sim.head_cost) + sim.head,
    ]
    flops = leave1 * table[1] + leave2 * table[2] + rest * table[4]
    s = sim.score(choice)
    assert s.accuracy == pytest.approx(right.mean())
    assert s.flops == pytest.approx(flops.mean())
    assert s.mean_layers == pytest.approx((leave1 * 1 + leave2 * 2 + rest * 4).mean())
    assert sim.score((None, None)).relative(sim.static) == pytest.approx(1.0)
    assert sim.config(choice).describe().startswith("1:linear>")


def test_one_pass_and_circular_searches(tiny_cfg):
    sim = Simulator(_recording(), tiny_cfg, thresholds=6)
    every = list(itertools.product(sim.options(0), sim.options(1)))
    for lam in (0.3, 0.9, 0.99, 0.9995):
        first = one_pass(sim, lam)
        final, _ = circular(sim, lam, first, max_rounds=50)

        def cost(ch, lam=lam):
            return sim.cost(sim.score(ch), lam)

        assert cost(final) <= cost(first) + 1e-12
        # The circular search stops where no single change helps.
        for p in range(2):
            for o in sim.options(p):
                cand = tuple(o if q == p else final[q] for q in range(2))
                assert cost(cand) >= cost(final) - 1e-12
        # On two positions it reaches the best configuration there is.
        assert cost(final) == pytest.approx(min(cost(ch) for ch in every), abs=1e-9)
    # Accuracy first (lambda near 1): thresholds where the exits are always right, so nothing is lost.
    best = circular(sim, 0.9995, one_pass(sim, 0.9995), 50)[0]
    assert sim.score(best).accuracy >= sim.backbone_accuracy and sim.score(best).flops < sim.static
    # Compute first (lambda small): nearly every row leaves at the first exit.
    assert sim.score(circular(sim, 0.01, one_pass(sim, 0.01), 50)[0]).mean_layers < 1.1


def test_simulation_matches_running_the_policy_in_the_model(tiny_dyce_bundle):
    bundle = load_bundle(tiny_dyce_bundle)
    model = bundle.build_model("dyce")
    splits = load_bundle_splits(bundle.dataset)
    mean, std = bundle.dataset["mean"], bundle.dataset["std"]
    rec = record(model, splits.val, mean, std)
    sim = Simulator(rec, model.cfg, thresholds=8)
    rng = np.random.default_rng(0)
    for _ in range(4):
        choice = tuple(
            None if rng.uniform() < 0.3 else (int(rng.integers(3)), int(rng.integers(len(sim.grid[p][0]))))
            for p in range(3)
        )
        s, run = sim.score(choice), measure(model, splits.val, mean, std, sim.config(choice), 512, "cpu")
        assert run["accuracy"] == pytest.approx(s.accuracy, abs=1e-6)  # the same rows are right
        assert run["mean_layers"] == pytest.approx(s.mean_layers, abs=1e-6)
        assert run["relative_compute"] == pytest.approx(s.relative(sim.static), abs=1e-9)


def test_search_writes_points_whose_accuracy_rises_with_compute(tiny_dyce_bundle):
    bundle = load_bundle(tiny_dyce_bundle)
    points = [p for p in bundle.front if p.method == "dyce"]
    assert points and [p.id for p in points] == [f"dyce-{i + 1}" for i in range(len(points))]
    # Kept while the search's own accuracy rises with its compute; measured again on held-out images.
    search = [(p.metrics["search_relative_compute"], p.metrics["search_accuracy"]) for p in points]
    assert all(c1 < c2 and a1 < a2 for (c1, a1), (c2, a2) in itertools.pairwise(search))
    assert all(0 <= p.metrics["val_accuracy"] <= 1 for p in points)
    assert any(p.metrics["val_accuracy"] != p.metrics["search_accuracy"] for p in points)
    for p in points:
        assert p.weights == "dyce" and p.metrics["split"] == "test" and p.metrics["n"] == 500
        assert DyCEConfig.from_params(p.params).exits and 0 < p.metrics["relative_compute"] < 1
    report = (tiny_dyce_bundle / "REPORT.md").read_text()
    assert "## dyce\n" in report and "Lambda sweep" in report and "| dyce |" in report  # fronts table
    assert "within 0.5 pt of static on validation" in report and "validation minus test accuracy" in report
    assert "search minus held-out validation accuracy" in report and "calibration part" in report
    assert all(
        p.metrics["accuracy_ci95"][0] <= p.metrics["accuracy"] <= p.metrics["accuracy_ci95"][1]
        for p in points
    )
    # Served behaviour = reported: evaluating a point reproduces its test metrics.
    last = points[-1]
    res = evaluate_bundle(tiny_dyce_bundle, last.id, "test", None, None, 512, "cpu")
    assert res["accuracy"] == pytest.approx(last.metrics["accuracy"], abs=1e-5)
    assert res["mean_layers"] == pytest.approx(last.metrics["mean_layers"], abs=1e-4)
    assert res["relative_compute"] == pytest.approx(last.metrics["relative_compute"], abs=1e-4)


def test_calibration_split_is_a_seeded_partition_and_zero_keeps_the_whole_split():
    val = load_dataset("synthetic").val
    cal, held = calibration_split(val, 0.5)
    assert len(cal) + len(held) == len(val) and abs(len(cal) - len(held)) <= 1
    rows = {tuple(x.flatten().tolist()) for part in (cal, held) for x in part.images}
    assert len(rows) == len({tuple(x.flatten().tolist()) for x in val.images})  # a partition: none in both
    again, _ = calibration_split(val, 0.5)
    assert torch.equal(again.images, cal.images)
    assert calibration_split(val, 0.0) == (val, None)
    with pytest.raises(ValueError):
        calibration_split(val, 1.0)
