"""`skipvit search lac` on the tiny bundle, and LAC on a tiny UViT (`train static --shared-layers`)."""

from __future__ import annotations

import json
import shutil

import pytest

from skipvit.cli import main
from skipvit.model.bundle import load_bundle
from skipvit.training.search.lac import parse_alphas, point_id
from tests.cli_args import argv


def search_lac(bundle, words: str) -> None:
    """`skipvit search lac` on 48 test images of ``bundle``, with the flags in ``words``."""
    main(argv(f"search lac --limit 48 --device cpu --request-images 4 {words}", bundle=bundle))


@pytest.fixture
def bundle_dir(tiny_bundle, tmp_path):
    out = tmp_path / "tiny"
    shutil.copytree(tiny_bundle, out)
    return out


def lac_points(root):
    return {p.id: p for p in load_bundle(root).front if p.method == "lac"}


def test_writes_both_modes_per_alpha_with_test_and_validation_metrics(bundle_dir, capsys):
    search_lac(bundle_dir, "--alphas 0.8,0.3")
    points = lac_points(bundle_dir)  # load_bundle also verifies the manifest
    report = (bundle_dir / "REPORT.md").read_text()
    # an alpha whose validation decisions repeat the smaller one's is named in the report instead
    left = {i for i in ("lac-ex-0.8", "lac-batch4-0.8") if f"`{i}` (as `" in report}
    assert set(points) == {"lac-ex-0.3", "lac-ex-0.8", "lac-batch4-0.3", "lac-batch4-0.8"} - left
    depth = load_bundle(bundle_dir).architecture.depth
    for p in points.values():
        assert p.weights == "static" and p.params["mode"] in ("per-example", "per-batch")
        m = p.metrics
        assert m["split"] == "test" and m["n"] == 48 and 0 <= m["accuracy"] <= 1
        assert 2 <= m["mean_layers"] <= depth and m["relative_compute"] == pytest.approx(
            m["mean_layers"] / depth, abs=1e-4
        )
        assert m["eval_batch"] == (4 if p.params["mode"] == "per-batch" else 512)
        assert p.params.get("request_images") == (4 if p.params["mode"] == "per-batch" else None)
        assert 0 <= m["val_accuracy"] <= 1 and 2 <= m["val_mean_layers"] <= depth
        assert m["accuracy_ci95"][0] <= m["accuracy"] <= m["accuracy_ci95"][1]
    if "lac-ex-0.8" in points:
        assert points["lac-ex-0.3"].metrics["mean_layers"] >= points["lac-ex-0.8"].metrics["mean_layers"]
    assert "## lac" in report and "skipvit search lac" in report and "requests of **4 images**" in report
    assert "| lac |" in report.split("## fronts", 1)[1]  # the fronts table has a row for LAC
    assert "lac-batch4-0.3" in capsys.readouterr().out


def test_an_alpha_that_repeats_the_decisions_of_the_one_before_stays_off_the_front(bundle_dir):
    # alphas this close halt every validation image at the same layer: one measurement, one point
    search_lac(bundle_dir, "--alphas 0.98,0.99,1.0 --modes per-example")
    points = lac_points(bundle_dir)
    assert set(points) == {"lac-ex-0.98"}
    report = (bundle_dir / "REPORT.md").read_text()
    assert "Left off the front" in report
    assert "`lac-ex-0.99` (as `lac-ex-0.98`)" in report and "`lac-ex-1` (as `lac-ex-0.98`)" in report


def test_a_rerun_replaces_the_earlier_lac_points_and_evaluate_reproduces_them(bundle_dir, capsys):
    search_lac(bundle_dir, "--alphas 0.3,0.8")
    search_lac(bundle_dir, "--alphas 0.5 --modes per-batch")
    points = lac_points(bundle_dir)
    assert set(points) == {"lac-batch4-0.5"}
    assert {p.id for p in load_bundle(bundle_dir).front} >= {"static", "lac-batch4-0.5"}
    capsys.readouterr()
    main(argv("evaluate --point lac-batch4-0.5 --limit 48 --json --device cpu", bundle=bundle_dir))
    got = json.loads(capsys.readouterr().out)
    m = points["lac-batch4-0.5"].metrics  # measured on requests of 4 images; evaluate serves it the same way
    assert got["accuracy"] == pytest.approx(m["accuracy"], abs=1e-5)
    assert got["mean_layers"] == pytest.approx(m["mean_layers"], abs=1e-4)


def test_bad_arguments_say_what_to_do(bundle_dir, capsys):
    with pytest.raises(SystemExit):
        search_lac(bundle_dir, "--weights nope")
    assert "Hint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        search_lac(bundle_dir, "--alphas 0.5,-1")
    assert "alpha" in capsys.readouterr().err
    assert parse_alphas("1.0, 0.5,0.5") == [0.5, 1.0]
    assert point_id("static", "per-example", 0.05) == "lac-ex-0.05"
    assert point_id("rl", "per-batch", 1.0, 8) == "lac-rl-batch8-1"
    with pytest.raises(SystemExit):
        search_lac(bundle_dir, "--request-images 1")
    assert "Hint" in capsys.readouterr().err


def test_a_tiny_uvit_trains_and_lac_runs_on_it(tmp_path):
    out = tmp_path / "uvit"
    uvit = "train static --data synthetic --preset tiny --shared-layers --device cpu"
    main(argv(f"{uvit} --limit-train 64 --epochs 1", out=out, ckpt_dir=tmp_path / "ck"))
    bundle = load_bundle(out)
    assert bundle.architecture.shared_layers
    state = bundle.load_weights("static")
    assert any(k.startswith("blocks.0.") for k in state) and not any(k.startswith("blocks.1.") for k in state)
    search_lac(out, "--alphas 0.5")
    points = lac_points(out)
    assert set(points) == {"lac-ex-0.5", "lac-batch4-0.5"}
    assert all(2 <= p.metrics["mean_layers"] <= bundle.architecture.depth for p in points.values())
