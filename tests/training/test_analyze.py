"""`skipvit analyze`: path distribution, processing ratio and unnecessary activations."""

from __future__ import annotations

import json

import pytest
import torch

from skipvit.cli import main
from skipvit.model.bundle import load_bundle
from skipvit.model.config import ViTConfig
from skipvit.model.policy import RUN, SKIP, MaskPolicy
from skipvit.model.vit import build_model
from skipvit.training.analyze import (
    analyze_bundle,
    path_distribution,
    path_strings,
    processing_ratio,
    unnecessary_activations,
)
from tests.cli_args import argv


def _paths(*strings: str) -> torch.Tensor:
    return torch.tensor([[c == "1" for c in s] for s in strings])  # (N, L) bool


def test_path_strings_distribution_and_ratio():
    ex = _paths("1101", "1111", "1101", "1000", "1101", "1111")
    assert path_strings(ex) == ["1101", "1111", "1101", "1000", "1101", "1111"]
    dist = path_distribution(ex)
    assert [(d["path"], d["count"], d["layers"]) for d in dist] == [
        ("1101", 3, 3),
        ("1111", 2, 4),
        ("1000", 1, 1),
    ]
    assert [d["percent"] for d in dist] == pytest.approx([50.0, 100 / 3, 100 / 6])
    assert processing_ratio(ex) == pytest.approx([1.0, 5 / 6, 2 / 6, 5 / 6])


def test_path_distribution_ties_sort_by_path_and_empty_input():
    dist = path_distribution(_paths("01", "10", "00", "10", "01"))
    assert [d["path"] for d in dist] == ["01", "10", "00"]
    assert path_distribution(torch.zeros(0, 3, dtype=torch.bool)) == []
    assert processing_ratio(torch.zeros(0, 3, dtype=torch.bool)) == [0.0, 0.0, 0.0]


CRITICAL = 1  # the only layer that changes the answer


def _one_layer_model():
    """Depth 3, two classes: class 1 iff layer CRITICAL ran; every other layer is the identity.

    Every block's residual branches end in zeroed projections, so a block adds nothing; layer
    CRITICAL's ``mlp.fc2.bias`` then adds 10 along dim 0. The embedding ignores the image (CLS is
    [-1, 1, 0, ...]), and the head scores class 1 by the normalised CLS's dim 0, which is
    negative before layer CRITICAL and positive after it.
    """
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=4, in_channels=1, patch_size=4, dim=8, depth=3, heads=2, num_classes=2)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.norm.weight.fill_(1.0)
        for blk in model.blocks:
            blk.norm1.weight.fill_(1.0)
            blk.norm2.weight.fill_(1.0)
        model.cls_token[0, 0, :2] = torch.tensor([-1.0, 1.0])
        model.blocks[CRITICAL].mlp.fc2.bias[0] = 10.0
        model.head.weight[1, 0] = 1.0
    return model


def test_hand_built_model_behaves_as_designed():
    model = _one_layer_model()
    paths = _paths("111", "010", "000", "101", "110", "011")
    x = torch.randn(6, 1, 4, 4)
    out = model(x, MaskPolicy(torch.where(paths, RUN, SKIP)))
    assert torch.equal(out.executed, paths)
    assert out.logits.argmax(-1).tolist() == [1, 1, 0, 0, 1, 1]


def test_unnecessary_activations_exact_counts():
    model = _one_layer_model()
    #            A      B      C      D      E      F      G
    paths = _paths("111", "010", "000", "101", "110", "011", "010")
    labels = torch.tensor([1, 1, 0, 0, 0, 1, 0])
    x = torch.randn(7, 1, 4, 4)
    out = model(x, MaskPolicy(torch.where(paths, RUN, SKIP)))
    preds = out.logits.argmax(-1)
    # Correct: A, B, F (class 1) and C, D (class 0); E and G are wrong and not examined.
    # A (111): layer 1 or 3 off keeps it correct -> unnecessary.  B (010): its only layer is
    # critical -> not counted.  C (000): ran nothing -> not counted.  D (101): both layers are
    # identities -> unnecessary.  F (011): layer 3 off keeps it correct -> unnecessary.
    res = unnecessary_activations(model, x, labels, out.executed, preds, ["zero", "one"], batch_size=2)
    assert res["correct"] == 5 and res["unnecessary"] == 3
    assert res["percent"] == pytest.approx(60.0)
    assert res["mean_class_percent"] == pytest.approx((50.0 + 200 / 3) / 2)
    assert res["replay_mismatch"] == 0
    by_class = {r["name"]: (r["class"], r["correct"], r["unnecessary"]) for r in res["per_class"]}
    assert by_class == {"zero": (0, 2, 1), "one": (1, 3, 2)}
    assert [r["percent"] for r in res["per_class"]] == pytest.approx([50.0, 200 / 3])
    per_layer = [(r["layer"], r["ran_correct"], r["unnecessary"]) for r in res["per_layer"]]
    assert per_layer == [(1, 2, 2), (2, 3, 0), (3, 3, 3)]


def test_only_critical_layer_is_not_unnecessary():
    model = _one_layer_model()
    paths = _paths("010", "010")
    labels = torch.tensor([1, 1])
    x = torch.randn(2, 1, 4, 4)
    res = unnecessary_activations(
        model, x, labels, paths, torch.tensor([1, 1]), ["zero", "one"], batch_size=8
    )
    assert res["correct"] == 2 and res["unnecessary"] == 0 and res["percent"] == 0.0
    assert res["per_class"][0]["percent"] is None  # no correct image of class 0


def test_analyze_bundle_end_to_end(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default output directory is relative to the working directory
    res = analyze_bundle(tiny_bundle, None, None, 64, 32, "cpu", None)
    out = tmp_path / "runs" / "analysis" / tiny_bundle.name / "static"
    assert res["out_dir"] == str(out.relative_to(tmp_path))
    for name in ("analysis.json", "analysis.md", "processing_ratio.png"):
        assert (out / name).stat().st_size > 100
    saved = json.loads((out / "analysis.json").read_text())
    assert {
        "point",
        "method",
        "n",
        "accuracy",
        "mean_layers",
        "depth",
        "paths",
        "processing_ratio",
        "unnecessary",
    } <= saved.keys()
    assert saved["n"] == 64 and saved["point"] == "static"
    assert saved["paths"] == [{"path": "1111", "count": 64, "percent": 100.0, "layers": 4}]
    assert saved["processing_ratio"] == [1.0] * 4
    un = saved["unnecessary"]
    assert un["correct"] == round(saved["accuracy"] * 64) and un["replay_mismatch"] == 0
    assert sum(r["correct"] for r in un["per_class"]) == un["correct"]
    assert [r["name"] for r in un["per_class"]] == ["class0", "class1", "class2", "class3"]
    assert all(r["ran_correct"] == un["correct"] for r in un["per_layer"])
    md = (out / "analysis.md").read_text()
    assert "`1111`" in md and "class3" in md
    load_bundle(tiny_bundle)  # nothing was written into the bundle


def test_cli_analyze(tiny_bundle, tmp_path, capsys):
    main(argv("analyze --limit 32 --device cpu --point static", bundle=tiny_bundle, out=tmp_path / "a"))
    printed = capsys.readouterr().out
    assert "`1111`" in printed and "100.00%" in printed and str(tmp_path / "a") in printed
    assert json.loads((tmp_path / "a" / "analysis.json").read_text())["n"] == 32


def test_into_report_adds_one_section_and_keeps_the_bundle_loadable(tiny_bundle, tmp_path):
    import shutil

    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    for limit in ("16", "8"):
        main(argv(f"analyze --limit {limit} --device cpu --into-report", bundle=b, out=tmp_path / "a"))
    report = (b / "REPORT.md").read_text()
    assert report.count("## analysis: static") == 1 and "8 images" in report and "16 images" not in report
    assert "\n# " not in report.split("## analysis: static")[1]  # headings nested under the section
    load_bundle(b)  # the manifest was refreshed


def test_drop_one_layer_table(tiny_bundle, tmp_path, capsys):
    main(
        argv(
            "analyze --point static --limit 60 --device cpu --drop-one",
            bundle=tiny_bundle,
            out=tmp_path / "a",
        )
    )
    result = json.loads((tmp_path / "a" / "analysis.json").read_text())
    rows = result["drop_one"]
    depth = load_bundle(tiny_bundle).architecture.depth
    assert [r["removed"] for r in rows] == [None, *range(1, depth + 1)]
    assert rows[0]["test"] == pytest.approx(result["accuracy"])  # every layer: the static point itself
    assert all(0 <= r["val"] <= 1 and 0 <= r["test"] <= 1 for r in rows)
    assert len({r["test"] for r in rows}) > 1  # removing a layer changes the answers
    assert "## Drop one layer (weights `static`)" in capsys.readouterr().out
