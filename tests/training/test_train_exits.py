"""`skipvit train exits`: the loss, a frozen backbone, resuming, and what it writes."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from skipvit.cli import main
from skipvit.model.bundle import load_bundle, verify_manifest
from skipvit.model.exits import ExitSet, exits_of
from skipvit.training.backbone import backbone_features
from skipvit.training.data import load_bundle_splits
from skipvit.training.train.exits import ExitTrainConfig, soft_cross_entropy, train_epoch
from tests.cli_args import argv


def train_exits(bundle, ckpt_dir, words: str = "") -> None:
    """`skipvit train exits` on ``bundle`` on the CPU, with the flags in ``words``."""
    main(argv(f"train exits --device cpu {words}", bundle=bundle, ckpt_dir=ckpt_dir))


def test_soft_cross_entropy():
    torch.manual_seed(0)
    z = torch.randn(8, 5, requires_grad=True)
    teacher = torch.randn(8, 5)
    loss = soft_cross_entropy(z, teacher)
    expected = -(teacher.softmax(-1) * z.log_softmax(-1)).sum(-1).mean()
    assert torch.allclose(loss, expected)
    # A one-hot-like teacher gives the hard cross-entropy on its argmax.
    sharp = soft_cross_entropy(z, teacher * 1e4)
    assert torch.allclose(sharp, F.cross_entropy(z, teacher.argmax(-1)), atol=1e-5)
    # The gradient vanishes when the exit matches the teacher (at any temperature).
    for temperature in (1.0, 3.0):
        y = teacher.clone().requires_grad_(True)
        soft_cross_entropy(y, teacher, temperature).backward()
        assert y.grad.abs().max() < 1e-6


def test_heads_train_and_the_backbone_does_not_move(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    model = bundle.build_model("static")
    model.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    splits = load_bundle_splits(bundle.dataset)
    mean, std = bundle.dataset["mean"], bundle.dataset["std"]
    exits = ExitSet(model.cfg, [1, 2, 3], ["linear", "mlp-m"])
    feats, teacher = backbone_features(model, splits.train, mean, std, exits.positions)
    assert feats.shape == (len(splits.train), 3, 2, model.cfg.dim) and teacher.shape == (len(splits.train), 4)
    with torch.no_grad():  # the recorded final logits are the model's own
        assert torch.allclose(
            teacher[:32], model(((splits.train.images[:32].float() / 255) - 0.3) / 0.3).logits, atol=1e-5
        )
    cfg = ExitTrainConfig(epochs=4, batch_size=128, lr=5e-3)
    opt = torch.optim.AdamW(exits.parameters(), lr=cfg.lr)
    for group in opt.param_groups:
        group["base_lr"] = cfg.lr
    g = torch.Generator().manual_seed(0)
    losses, step = [], 0
    for _ in range(cfg.epochs):
        step, loss = train_epoch(exits, opt, feats, teacher, splits.train.labels, cfg, step, 4 * 15, g, "cpu")
        losses.append(loss)
    assert losses[-1] < losses[0]
    assert all(p.grad is not None for p in exits.parameters())
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_weight_set_holds_the_backbone_bit_for_bit_plus_the_exits(tiny_dyce_bundle):
    bundle = load_bundle(tiny_dyce_bundle)
    static, dyce = bundle.load_weights("static"), bundle.load_weights("dyce")
    assert set(static) < set(dyce)
    for k, v in static.items():
        assert dyce[k].dtype == v.dtype and torch.equal(dyce[k], v), k
    extra = set(dyce) - set(static)
    assert extra and all(k.startswith("exits.heads.") for k in extra)
    exits = exits_of(bundle.build_model("dyce"))
    assert exits is not None and exits.positions == [1, 2, 3] and exits.types == ["linear", "mlp-s", "mlp-m"]
    assert exits_of(bundle.build_model("static")) is None
    report = (tiny_dyce_bundle / "REPORT.md").read_text()
    assert "## dyce: exits" in report and "frozen" in report


SHORT = "--epochs 2 --types linear --positions 2"


def test_resume_continues_to_the_same_heads(tiny_bundle, tmp_path):
    def train(out, more=""):
        train_exits(out, tmp_path / f"ck-{out.name}", f"{SHORT} {more}")

    whole, split = tmp_path / "whole", tmp_path / "split"
    shutil.copytree(tiny_bundle, whole)
    shutil.copytree(tiny_bundle, split)
    train(whole)
    train(split, "--stop-after 1")
    assert "dyce" not in load_bundle(split).weight_sets  # nothing written until the run ends
    train(split, "--resume")
    a, b = load_bundle(whole).load_weights("dyce"), load_bundle(split).load_weights("dyce")
    assert a.keys() == b.keys() and list(a) and all(torch.equal(a[k], b[k]) for k in a)
    assert set(k for k in a if k.startswith("exits.")) == {
        f"exits.heads.2_linear.{n}" for n in ("norm.weight", "norm.bias", "fc.weight", "fc.bias")
    }


def test_resume_refuses_a_checkpoint_of_other_settings(tiny_bundle, tmp_path, capsys):
    train_exits(tiny_bundle, tmp_path / "ck", f"{SHORT} --stop-after 1")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        train_exits(tiny_bundle, tmp_path / "ck", f"{SHORT} --temperature 2 --resume")
    err = capsys.readouterr().err
    assert "other settings (train.temperature)" in err and "Hint:" in err


def test_retraining_drops_points_measured_with_old_heads(tiny_dyce_bundle, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(tiny_dyce_bundle, out)
    assert any(p.weights == "dyce" for p in load_bundle(out).front)
    train_exits(out, tmp_path / "ck", "--epochs 1")
    bundle = load_bundle(out)
    verify_manifest(out)
    assert not any(p.weights == "dyce" for p in bundle.front) and bundle.point("static")


@pytest.mark.parametrize(
    "extra, message",
    [
        ("--name static", "overwrite the backbone"),
        ("--types linear,big", "unknown"),
        ("--weights nope", "no weight set"),
        ("--positions 4", "out of range"),
    ],
)
def test_bad_arguments_are_refused_with_a_hint(tiny_bundle, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit):
        train_exits(tiny_bundle, tmp_path, extra)
    assert message in capsys.readouterr().err


def test_another_methods_weight_set_is_not_overwritten(tiny_rl_bundle, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_exits(tiny_rl_bundle, tmp_path, "--name rl")
    err = capsys.readouterr().err
    assert "would overwrite weight set 'rl', which points of method rl use" in err and "Hint:" in err
    assert "rl" in load_bundle(tiny_rl_bundle).weight_sets
