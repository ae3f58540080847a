"""`skipvit train static` and `skipvit evaluate` end to end on synthetic data."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from skipvit.cli import main
from skipvit.model.bundle import load_bundle

TRAIN = [
    "train",
    "static",
    "--data",
    "synthetic",
    "--preset",
    "tiny",
    "--device",
    "cpu",
    "--seed",
    "3",
    "--limit-train",
    "256",
    "--epochs",
    "2",
]


def test_tiny_bundle_is_complete(tiny_bundle):
    b = load_bundle(tiny_bundle)
    point = b.point("static")
    assert point.method == "static" and point.weights == "static"
    assert point.metrics["split"] == "test" and point.metrics["n"] == 500
    assert point.metrics["mean_layers"] == b.architecture.depth
    # 4 classes: chance is 0.25. Crops pad with black (pixel 0), but the synthetic images' background
    # is noise, so three epochs reach about 0.48 (0.63 when the pad was the mean).
    assert point.metrics["accuracy"] > 0.4
    report = (tiny_bundle / "REPORT.md").read_text()
    assert "skipvit train static" in report and "--data synthetic" in report
    assert (tiny_bundle / "front.png").stat().st_size > 1000
    assert b.dataset["split"] == {"val_fraction": 0.1, "seed": 0}


def test_resume_equals_uninterrupted_run(tmp_path):
    main([*TRAIN, "--out", str(tmp_path / "a"), "--ckpt-dir", str(tmp_path / "ca")])
    main([*TRAIN, "--out", str(tmp_path / "b"), "--ckpt-dir", str(tmp_path / "cb"), "--stop-after", "1"])
    assert not (tmp_path / "b").exists()
    main([*TRAIN, "--out", str(tmp_path / "b"), "--ckpt-dir", str(tmp_path / "cb"), "--resume"])
    wa = load_file(str(tmp_path / "a" / "weights" / "static.safetensors"))
    wb = load_file(str(tmp_path / "b" / "weights" / "static.safetensors"))
    assert wa.keys() == wb.keys()
    assert all((wa[k] == wb[k]).all() for k in wa)


def test_evaluate_json_limit_and_point(tiny_bundle, capsys):
    main(
        [
            "evaluate",
            "--bundle",
            str(tiny_bundle),
            "--split",
            "test",
            "--limit",
            "50",
            "--json",
            "--point",
            "static",
            "--device",
            "cpu",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 50 and out["point"] == "static" and 0.0 <= out["accuracy"] <= 1.0
    assert out["mean_layers"] == 4.0


def test_evaluate_unknown_point_is_a_clear_error(tiny_bundle, capsys):
    try:
        main(["evaluate", "--bundle", str(tiny_bundle), "--point", "nope"])
    except SystemExit as e:
        assert e.code == 2
    assert "nope" in capsys.readouterr().err


def test_second_stage_continues_from_a_bundle(tiny_bundle, tmp_path):
    main(
        [
            *TRAIN,
            "--epochs",
            "1",
            "--init-from",
            str(tiny_bundle),
            "--out",
            str(tmp_path / "s2"),
            "--ckpt-dir",
            str(tmp_path / "c"),
        ]
    )
    report = (tmp_path / "s2" / "REPORT.md").read_text()
    assert "Continued from the `static` weights" in report
    assert "> Command: `skipvit train static --data synthetic" in report  # the first stage's command
    assert load_bundle(tmp_path / "s2").architecture == load_bundle(tiny_bundle).architecture


def test_second_stage_keeps_the_first_stages_split(tiny_bundle, tmp_path, capsys):
    # TRAIN has --seed 3, the first stage seed 0: the second stage must not train on the first's val.
    main(
        [
            *TRAIN,
            "--epochs",
            "1",
            "--init-from",
            str(tiny_bundle),
            "--out",
            str(tmp_path / "s2"),
            "--ckpt-dir",
            str(tmp_path / "c"),
        ]
    )
    assert load_bundle(tmp_path / "s2").dataset["split"] == {"val_fraction": 0.1, "seed": 0}
    assert "(carved from train: fraction 0.1, seed 0)" in (tmp_path / "s2" / "REPORT.md").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(
            [
                *TRAIN,
                "--epochs",
                "1",
                "--val-fraction",
                "0.3",
                "--init-from",
                str(tiny_bundle),
                "--out",
                str(tmp_path / "s3"),
                "--ckpt-dir",
                str(tmp_path / "c3"),
            ]
        )
    err = capsys.readouterr().err
    assert "--val-fraction 0.3 conflicts with the split recorded in" in err and "Hint:" in err


@pytest.mark.parametrize(
    "change, named",
    [
        (["--lr", "5e-4"], "train.lr"),
        (["--seed", "7"], "train.seed"),
        (["--epochs", "1"], "train.epochs"),
        (["--limit-train", "128"], "data.limit_train"),
    ],
)
def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path, capsys, change, named):
    main([*TRAIN, "--out", str(tmp_path / "a"), "--ckpt-dir", str(tmp_path / "c"), "--stop-after", "1"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*TRAIN, *change, "--out", str(tmp_path / "b"), "--ckpt-dir", str(tmp_path / "c"), "--resume"])
    err = capsys.readouterr().err
    assert "was written by a run with other settings" in err and named in err and "Hint:" in err
    assert not (tmp_path / "b").exists()


def test_resume_refuses_a_checkpoint_without_settings(tmp_path, capsys):
    main([*TRAIN, "--out", str(tmp_path / "a"), "--ckpt-dir", str(tmp_path / "c"), "--stop-after", "1"])
    meta = json.loads((tmp_path / "c" / "checkpoint.json").read_text())
    del meta["meta"]["config"]  # as the checkpoints written before settings were recorded
    (tmp_path / "c" / "checkpoint.json").write_text(json.dumps(meta))
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*TRAIN, "--out", str(tmp_path / "b"), "--ckpt-dir", str(tmp_path / "c"), "--resume"])
    assert "records no settings" in capsys.readouterr().err
