"""`skipvit train static` and `skipvit evaluate` end to end on synthetic data."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from skipvit.cli import main
from skipvit.model.bundle import load_bundle
from tests.cli_args import argv

TRAIN = "train static --data synthetic --preset tiny --device cpu --seed 3 --limit-train 256 --epochs 2"


def train(out, ckpt_dir, words: str = "", **flags) -> None:
    """`skipvit train static` as ``TRAIN`` with the flags in ``words`` and ``flags``."""
    main(argv(f"{TRAIN} {words}", out=out, ckpt_dir=ckpt_dir, **flags))


def test_tiny_bundle_is_complete(tiny_bundle):
    b = load_bundle(tiny_bundle)
    point = b.point("static")
    assert point.method == "static" and point.weights == "static"
    assert point.metrics["split"] == "test" and point.metrics["n"] == 500
    assert point.metrics["mean_layers"] == b.architecture.depth
    # 4 classes: chance is 0.25. Crops pad with black (pixel 0), but the synthetic images' background
    # is noise, so three epochs reach about 0.48 (0.63 when the pad was the mean).
    assert point.metrics["accuracy"] > 0.4
    low, high = point.metrics["accuracy_ci95"]  # Wilson, 95%, on the 500 test images
    assert low < point.metrics["accuracy"] < high and 0.05 < high - low < 0.1
    report = (tiny_bundle / "REPORT.md").read_text()
    assert "skipvit train static" in report and "--data synthetic" in report
    assert (tiny_bundle / "front.png").stat().st_size > 1000
    assert b.dataset["split"] == {"val_fraction": 0.1, "seed": 0}


def test_resume_equals_uninterrupted_run(tmp_path):
    train(tmp_path / "a", tmp_path / "ca")
    train(tmp_path / "b", tmp_path / "cb", "--stop-after 1")
    assert not (tmp_path / "b").exists()
    train(tmp_path / "b", tmp_path / "cb", "--resume")
    wa = load_file(str(tmp_path / "a" / "weights" / "static.safetensors"))
    wb = load_file(str(tmp_path / "b" / "weights" / "static.safetensors"))
    assert wa.keys() == wb.keys()
    assert all((wa[k] == wb[k]).all() for k in wa)


def test_evaluate_json_limit_and_point(tiny_bundle, capsys):
    main(argv("evaluate --split test --limit 50 --json --point static --device cpu", bundle=tiny_bundle))
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 50 and out["point"] == "static" and 0.0 <= out["accuracy"] <= 1.0
    assert out["accuracy_ci95"][0] <= out["accuracy"] <= out["accuracy_ci95"][1]
    assert out["mean_layers"] == 4.0


def test_evaluate_unknown_point_is_a_clear_error(tiny_bundle, capsys):
    try:
        main(["evaluate", "--bundle", str(tiny_bundle), "--point", "nope"])
    except SystemExit as e:
        assert e.code == 2
    assert "nope" in capsys.readouterr().err


@pytest.fixture(scope="module")
def second_stage(tiny_bundle, tmp_path_factory):
    """One epoch of a second stage that continues from the tiny bundle."""
    root = tmp_path_factory.mktemp("second-stage")
    train(root / "s2", root / "c", "--epochs 1", init_from=tiny_bundle)
    return root / "s2"


def test_second_stage_continues_from_a_bundle(tiny_bundle, second_stage):
    report = (second_stage / "REPORT.md").read_text()
    assert "Continued from the `static` weights" in report
    assert "> Command: `skipvit train static --data synthetic" in report  # the first stage's command
    assert load_bundle(second_stage).architecture == load_bundle(tiny_bundle).architecture


def test_second_stage_keeps_the_first_stages_split(tiny_bundle, second_stage, tmp_path, capsys):
    # TRAIN has --seed 3, the first stage seed 0: the second stage must not train on the first's val.
    assert load_bundle(second_stage).dataset["split"] == {"val_fraction": 0.1, "seed": 0}
    assert "(carved from train: fraction 0.1, seed 0)" in (second_stage / "REPORT.md").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        train(tmp_path / "s3", tmp_path / "c3", "--epochs 1 --val-fraction 0.3", init_from=tiny_bundle)
    err = capsys.readouterr().err
    assert "--val-fraction 0.3 conflicts with the split recorded in" in err and "Hint:" in err


@pytest.mark.parametrize(
    "change, named",
    [
        ("--lr 5e-4", "train.lr"),
        ("--seed 7", "train.seed"),
        ("--epochs 1", "train.epochs"),
        ("--limit-train 128", "data.limit_train"),
    ],
)
def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path, capsys, change, named):
    train(tmp_path / "a", tmp_path / "c", "--stop-after 1")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        train(tmp_path / "b", tmp_path / "c", f"{change} --resume")
    err = capsys.readouterr().err
    assert "was written by a run with other settings" in err and named in err and "Hint:" in err
    assert not (tmp_path / "b").exists()


def test_resume_refuses_a_checkpoint_without_settings(tmp_path, capsys):
    train(tmp_path / "a", tmp_path / "c", "--stop-after 1")
    meta = json.loads((tmp_path / "c" / "checkpoint.json").read_text())
    del meta["meta"]["config"]  # as the checkpoints written before settings were recorded
    (tmp_path / "c" / "checkpoint.json").write_text(json.dumps(meta))
    capsys.readouterr()
    with pytest.raises(SystemExit):
        train(tmp_path / "b", tmp_path / "c", "--resume")
    assert "records no settings" in capsys.readouterr().err


def test_layer_drop_trains_a_different_model_resumes_exactly_and_is_reported(tmp_path):
    train(tmp_path / "plain", tmp_path / "cp")
    train(tmp_path / "ld", tmp_path / "cl", "--layer-drop 0.5")
    train(tmp_path / "split", tmp_path / "cs", "--layer-drop 0.5 --stop-after 1")
    train(tmp_path / "split", tmp_path / "cs", "--layer-drop 0.5 --resume")
    plain, ld, split = (
        load_file(tmp_path / n / "weights" / "static.safetensors") for n in ("plain", "ld", "split")
    )
    assert any(not (plain[k] == ld[k]).all() for k in plain)  # the skips change what is learned
    assert all((ld[k] == split[k]).all() for k in ld)  # the skip draws resume with the generator
    assert "LayerDrop 0.5" in (tmp_path / "ld" / "REPORT.md").read_text()
    with pytest.raises(SystemExit):  # a checkpoint of another LayerDrop rate is refused
        train(tmp_path / "other", tmp_path / "cs", "--layer-drop 0.2 --resume")
