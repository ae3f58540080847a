"""`skipvit train rl` end to end: into an existing bundle, and transfer learning."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from skipvit.cli import main
from skipvit.model.bundle import load_bundle, write_manifest
from skipvit.training.data import load_dataset
from tests.cli_args import argv


def train_rl(out, ckpt_dir, words: str = "", **flags) -> None:
    """One epoch of `skipvit train rl` on 256 synthetic images into ``out``, with the flags in
    ``words`` and ``flags``."""
    common = "train rl --data synthetic --device cpu --epochs 1 --limit-train 256"
    main(argv(f"{common} {words}", out=out, ckpt_dir=ckpt_dir, **flags))


def test_rl_adds_a_point_to_an_existing_bundle(tiny_rl_bundle):
    out = tiny_rl_bundle
    b = load_bundle(out)
    assert {p.id for p in b.front} == {"static", "rl"}
    rl = b.point("rl")
    assert rl.weights == "rl" and rl.params == {"thresholds": [0.5] * 4}
    assert rl.metrics["split"] == "test" and 0 <= rl.metrics["mean_layers"] <= 4
    assert "## rl" in (out / "REPORT.md").read_text() and "## static" in (out / "REPORT.md").read_text()
    model = b.build_model("rl")
    assert model.agent is not None and len(model.agent.gates) == 4
    main(argv("evaluate --point rl --limit 20 --device cpu", bundle=out))


def test_transfer_learning_freezes_the_backbone(tiny_bundle, tmp_path):
    out = tmp_path / "t"
    train_rl(out, tmp_path / "c", "--data-opt classes=6 --freeze-backbone", init_from=tiny_bundle)
    b = load_bundle(out)
    assert b.architecture.num_classes == 6 and len(b.dataset["classes"]) == 6
    assert b.dataset["options"] == {"classes": 6} and b.default_point == "rl"
    before = load_file(str(tiny_bundle / "weights" / "static.safetensors"))
    after = load_file(str(out / "weights" / "rl.safetensors"))
    frozen = [k for k in before if not k.startswith("head.")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert after["head.weight"].shape[0] == 6
    assert any(not torch.equal(after[f"agent.gates.{j}.bias"], torch.full((1,), 2.0)) for j in range(4))
    main(argv("evaluate --limit 20 --device cpu", bundle=out))


def test_retraining_drops_the_points_measured_on_the_old_weights(tiny_gate_bundle, tmp_path, capsys):
    out = tmp_path / "b"
    shutil.copytree(tiny_gate_bundle, out)
    before = load_bundle(out)
    assert {p.id for p in before.front if p.weights == "rl"} == {"rl", "rl-t0.8", "nsga-a"}
    train_rl(out, tmp_path / "c", init_from=out)
    printed = capsys.readouterr().out
    bundle = load_bundle(out)  # also checks the manifest
    assert {p.id for p in bundle.front} == {"static", "rl"}
    assert "dropped 2 points" in printed and "nsga-a" in printed and "Hint:" in printed
    assert bundle.point("rl").metrics["n"] == 500 and bundle.default_point == before.default_point
    report = (out / "REPORT.md").read_text()
    assert "Dropped the points measured on the previous `rl` weights: rl-t0.8, nsga-a" in report


@pytest.mark.parametrize(
    "fixture, name, message",
    [
        ("tiny_bundle", "static", "points of method static use"),
        ("tiny_dyce_bundle", "dyce", "points of method dyce use"),
        ("tiny_dyce_bundle", "dyce-1", "would replace point 'dyce-1'"),
    ],
)
def test_rl_refuses_to_overwrite_another_methods_weight_set(
    request, tmp_path, capsys, fixture, name, message
):
    out = tmp_path / "b"
    shutil.copytree(request.getfixturevalue(fixture), out)
    with pytest.raises(SystemExit):
        train_rl(out, tmp_path / "c", init_from=out, name=name)
    err = capsys.readouterr().err
    assert message in err and "Hint: pick another --name" in err
    assert not (tmp_path / "c").exists()  # refused before any training


def test_rl_trains_on_the_split_of_the_bundle_it_writes_into(tiny_bundle, tmp_path, monkeypatch, capsys):
    from skipvit.training import run

    seen = []

    def spy(*args, **kwargs):
        seen.append({k: kwargs[k] for k in ("val_fraction", "seed")})
        return load_dataset(*args, **kwargs)

    monkeypatch.setattr(run, "load_dataset", spy)
    out = tmp_path / "b"
    shutil.copytree(tiny_bundle, out)
    recorded = load_bundle(out).dataset["split"]
    assert recorded == {"val_fraction": 0.1, "seed": 0}
    # --seed 3 seeds the training; the split stays the bundle's, on which its searches select.
    train_rl(out, tmp_path / "c", "--seed 3", init_from=out)
    assert seen == [recorded] and load_bundle(out).dataset["split"] == recorded
    # A fresh bundle still carves its split with --val-fraction and --seed.
    train_rl(tmp_path / "fresh", tmp_path / "c2", "--seed 3 --val-fraction 0.2 --preset tiny")
    assert seen[-1] == {"val_fraction": 0.2, "seed": 3}
    assert load_bundle(tmp_path / "fresh").dataset["split"] == {"val_fraction": 0.2, "seed": 3}
    capsys.readouterr()
    with pytest.raises(SystemExit):
        train_rl(out, tmp_path / "c3", "--val-fraction 0.2", init_from=out)
    err = capsys.readouterr().err
    assert "--val-fraction 0.2 conflicts with the split recorded" in err and "Hint:" in err


def test_rl_refuses_weights_from_another_split_than_the_bundle_it_writes_into(tiny_bundle, tmp_path, capsys):
    """`--init-from A --out B` where A and B split the same data differently: A's weights trained on
    some of B's validation images, on which B's searches select. Refused before any training."""
    out = tmp_path / "b"
    shutil.copytree(tiny_bundle, out)
    b = load_bundle(out)
    b.dataset["split"] = {"val_fraction": 0.1, "seed": 5}  # as `train static --seed 5` would record
    b.save()
    with pytest.raises(SystemExit):
        train_rl(out, tmp_path / "c", init_from=tiny_bundle)
    err = capsys.readouterr().err
    assert "was trained on another split of this dataset" in err and "Hint:" in err
    assert not (tmp_path / "c").exists()


def test_compare_pairs_two_points_on_the_same_images(tiny_rl_bundle, capsys):
    main(argv("compare --point rl --limit 80 --device cpu --json", bundle=tiny_rl_bundle))
    r = json.loads(capsys.readouterr().out)
    assert (r["point"], r["against"], r["split"], r["n"]) == ("rl", "static", "test", 80)
    assert r["difference"] == pytest.approx(r["accuracy"] - r["against_accuracy"])
    assert r["difference"] == pytest.approx((r["only_point_right"] - r["only_against_right"]) / 80)
    assert r["difference_ci95"][0] <= r["difference"] <= r["difference_ci95"][1] and 0 < r["p_value"] <= 1
    assert r["verdict"] in ("rl better", "rl worse", "no significant difference")
    main(argv("compare --point static --limit 80 --device cpu", bundle=tiny_rl_bundle))
    assert "static vs static" in capsys.readouterr().out  # a point against itself: no discordant image


def test_compare_into_report_writes_a_section_and_keeps_the_manifest(tiny_rl_bundle, tmp_path, capsys):
    out = tmp_path / "b"
    shutil.copytree(tiny_rl_bundle, out)
    main(argv("compare --point rl --limit 40 --device cpu --into-report", bundle=out))
    printed = capsys.readouterr().out.strip()
    report = (out / "REPORT.md").read_text()
    section = report.split("## compare: rl vs static (test)\n", 1)[1]
    assert "Command: `skipvit compare" in section and printed in section
    load_bundle(out)  # the manifest still verifies


def test_compare_reads_the_second_point_from_another_bundle_of_the_same_images(
    tiny_rl_bundle, tiny_bundle, tmp_path, capsys
):
    words = "compare --point rl --against static --limit 80 --device cpu --json"
    main(argv(words, bundle=tiny_rl_bundle))
    same = json.loads(capsys.readouterr().out)
    main(argv(words, bundle=tiny_rl_bundle, against_bundle=tiny_bundle))
    other = json.loads(capsys.readouterr().out)
    # tiny-rl is a copy of tiny plus an rl point: its static weights and images are tiny's
    assert other["against"] == f"{tiny_bundle}:static"
    assert {k: v for k, v in other.items() if k != "against"} == {
        k: v for k, v in same.items() if k != "against"
    }
    # a bundle that reads other images (here: another validation carve) cannot be paired
    moved = tmp_path / "moved"
    shutil.copytree(tiny_bundle, moved)
    meta = json.loads((moved / "bundle.json").read_text())
    meta["dataset"]["split"]["seed"] += 1
    (moved / "bundle.json").write_text(json.dumps(meta))
    write_manifest(moved)
    with pytest.raises(SystemExit):
        main(
            argv(
                words.replace("--limit 80 ", "--split val --limit 80 "),
                bundle=tiny_rl_bundle,
                against_bundle=moved,
            )
        )
    assert "cannot be paired" in capsys.readouterr().err
