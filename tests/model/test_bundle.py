"""Bundle format: round trip, manifest verification, refusals that name the file."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from skipvit.model.bundle import BundleError, Point, load_bundle, new_bundle
from skipvit.model.vit import build_model


@pytest.fixture
def bundle_dir(tmp_path, tiny_cfg):
    torch.manual_seed(0)
    model = build_model(tiny_cfg)
    b = new_bundle(
        tmp_path / "b",
        tiny_cfg,
        {
            "name": "synthetic",
            "classes": ["a", "b", "c", "d"],
            "image_size": 16,
            "channels": 1,
            "mean": [0.5],
            "std": [0.5],
        },
    )
    b.add_weight_set("static", model.state_dict())
    b.upsert_points([Point("static", "static", "static", {}, {"accuracy": 0.5, "mean_layers": 4.0})])
    (b.root / "REPORT.md").write_text("# report\n")
    b.save()
    return b.root, model


def test_round_trip(bundle_dir):
    root, model = bundle_dir
    b = load_bundle(root)
    assert b.point().id == "static" and b.architecture == model.cfg
    loaded = b.build_model("static")
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(loaded(x).logits, model.eval()(x).logits)
    manifest = json.loads((root / "manifest.json").read_text())["sha256"]
    assert set(manifest) == {"bundle.json", "weights/static.safetensors", "REPORT.md"}


def test_upsert_replaces_points_with_same_id(bundle_dir):
    b = load_bundle(bundle_dir[0])
    b.upsert_points([Point("static", "static", "static", {}, {"accuracy": 0.9, "mean_layers": 4.0})])
    assert [p.metrics["accuracy"] for p in b.front] == [0.9]


@pytest.mark.parametrize(
    ("target", "damage"),
    [
        ("weights/static.safetensors", "flip"),
        ("weights/static.safetensors", "truncate"),
        ("weights/static.safetensors", "delete"),
        ("bundle.json", "flip"),
        ("REPORT.md", "flip"),
    ],
)
def test_damaged_file_is_refused_by_name(bundle_dir, target, damage):
    root = bundle_dir[0]
    path = root / target
    data = path.read_bytes()
    if damage == "flip":
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    elif damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.unlink()
    with pytest.raises(BundleError, match=re.escape(target)):
        load_bundle(root)


def test_missing_manifest_and_extra_file_are_refused(bundle_dir):
    root = bundle_dir[0]
    (root / "weights" / "evil.safetensors").write_bytes(b"x")
    with pytest.raises(BundleError, match="evil"):
        load_bundle(root)
    (root / "weights" / "evil.safetensors").unlink()
    (root / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest"):
        load_bundle(root)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match=r"bundle\.json"):
        load_bundle(tmp_path)


def test_unknown_point_lists_known_ones(bundle_dir):
    b = load_bundle(bundle_dir[0])
    with pytest.raises(KeyError, match="static"):
        b.point("nope")


def test_copied_bundle_still_loads(bundle_dir, tmp_path):
    shutil.copytree(bundle_dir[0], tmp_path / "copy")
    assert load_bundle(tmp_path / "copy").weight_sets == {"static": "weights/static.safetensors"}


def test_no_pickle_in_the_project():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    offenders = []
    for pkg in ("model", "training", "kernels", "service"):
        for py in (root / pkg).rglob("*.py"):
            text = py.read_text()
            if "torch.load(" in text or "torch.save(" in text or "pickle.load(" in text:
                offenders.append(str(py.relative_to(root)))
    assert offenders == []
