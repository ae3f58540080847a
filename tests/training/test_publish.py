"""The publish step: what a command's points replace, the default point, front.png, REPORT.md
sections and the manifest."""

from __future__ import annotations

import shutil

import pytest

from skipvit.model.bundle import Point, load_bundle
from skipvit.training.publish import existing_bundle, holds_bundle, numbered, publish
from skipvit.training.report import read_section


@pytest.fixture
def bundle(tiny_bundle, tmp_path):
    shutil.copytree(tiny_bundle, tmp_path / "b")
    return load_bundle(tmp_path / "b")


def _point(pid: str, method: str = "rl", weights: str = "static", accuracy: float = 0.5) -> Point:
    metrics = {"accuracy": accuracy, "mean_layers": 2.0, "relative_compute": 0.5, "split": "test", "n": 10}
    return Point(pid, method, weights, {}, metrics)


def test_a_first_result_adds_its_points_and_section(bundle):
    before = (bundle.root / "front.png").read_bytes()
    seen = []

    def body(b, dropped):
        seen.append(([p.id for p in b.front], dropped))
        return "the body"

    dropped = publish(bundle, "mine", body, [_point("a-1"), _point("a-2")])
    assert dropped == [] and seen == [(["static", "a-1", "a-2"], [])]  # the body sees the new front
    again = load_bundle(bundle.root)  # the manifest covers every file
    assert [p.id for p in again.front] == ["static", "a-1", "a-2"]
    assert read_section(bundle.root, "mine") == "the body"
    assert read_section(bundle.root, "fronts") is None  # not a search, nothing dropped
    assert (bundle.root / "front.png").read_bytes() != before


def test_a_rerun_replaces_its_points_and_reports_the_ones_gone(bundle):
    publish(bundle, "mine", lambda *_: "one", [_point("a-1"), _point("a-2"), _point("a-3")])
    bundle = load_bundle(bundle.root)
    bundle.default_point = "a-3"
    dropped = publish(
        bundle, "mine", lambda *_: "two", [_point("a-1", accuracy=0.7)], lambda p: p.id.startswith("a-")
    )
    assert dropped == ["a-2", "a-3"]  # a-1 is written again
    again = load_bundle(bundle.root)
    assert [p.id for p in again.front] == ["static", "a-1"] and again.point("a-1").metrics["accuracy"] == 0.7
    assert again.default_point == "static"  # the default went: static takes over
    assert read_section(bundle.root, "mine") == "two"
    assert "| rl |" in read_section(bundle.root, "fronts")  # dropping points refreshes the table


def test_a_numbered_search_replaces_only_its_own_points(bundle):
    ids = ["nsga-1", "nsga-12", "nsga-joint-3", "nsga-w0.1-2", "nsga", "nsga-1x"]
    publish(bundle, "other", lambda *_: "x", [_point(i, method="nsga") for i in ids])
    dropped = publish(load_bundle(bundle.root), "nsga", lambda *_: "y", [_point("nsga-2")], numbered("nsga"))
    assert dropped == ["nsga-1", "nsga-12"]
    left = [p.id for p in load_bundle(bundle.root).front]
    assert left == ["static", "nsga-joint-3", "nsga-w0.1-2", "nsga", "nsga-1x", "nsga-2"]


def test_a_search_always_refreshes_the_fronts_section_and_a_report_only_touches_its_section(bundle):
    publish(bundle, "search", lambda *_: "found", [_point("s-1", method="lac")], fronts=True)
    assert "| lac |" in read_section(bundle.root, "fronts")
    png = (bundle.root / "front.png").read_bytes()
    publish(load_bundle(bundle.root), "analysis: static", lambda *_: "tables")
    assert read_section(bundle.root, "analysis: static") == "tables"
    assert (bundle.root / "front.png").read_bytes() == png  # no point changed: not redrawn
    load_bundle(bundle.root)


def test_the_default_point_falls_back_to_the_first_left_without_static(bundle):
    bundle.default_point = "static"
    publish(bundle, "mine", lambda *_: "x", [_point("a-1")], lambda p: p.id == "static")
    assert load_bundle(bundle.root).default_point == "a-1"


def test_an_out_directory_is_a_bundle_empty_or_refused(tiny_bundle, tmp_path):
    assert holds_bundle(tiny_bundle) and existing_bundle(tiny_bundle).root == tiny_bundle
    assert not holds_bundle(tmp_path / "missing") and existing_bundle(tmp_path / "missing") is None
    (tmp_path / "empty").mkdir()
    assert not holds_bundle(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="is not a bundle; Hint"):
        holds_bundle(tmp_path / "other")
