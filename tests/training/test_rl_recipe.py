"""The departures from the thesis that hold the backbone while the gates learn: distillation from
the starting weights, gates held then ramped, an exploration floor, and no random erasing."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from skipvit.cli import main
from skipvit.model.bundle import load_bundle
from skipvit.model.gates import GatePolicy, SkipAgent
from skipvit.training.reinforce import distillation
from skipvit.training.schedule import hold_then_ramp, set_lr
from tests.cli_args import argv


def test_hold_then_ramp_and_set_lr():
    assert [hold_then_ramp(s, 2, 4) for s in range(7)] == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert hold_then_ramp(0, 0, 0) == 1.0
    w = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD(
        [{"params": [w], "base_lr": 1.0, "hold": (10, 0)}, {"params": [], "base_lr": 1.0}], lr=1
    )
    set_lr(opt, 5, 100, 0)
    assert opt.param_groups[0]["lr"] == 0.0 and opt.param_groups[1]["lr"] > 0.9
    set_lr(opt, 10, 100, 0)
    assert opt.param_groups[0]["lr"] == opt.param_groups[1]["lr"]


def test_the_exploration_floor_keeps_a_dead_gate_sampling():
    agent = SkipAgent(dim=8, depth=1, init_bias=-30.0)  # p ~ 0: the layer would never run again
    h = torch.randn(4000, 3, 8)
    alive = torch.ones(4000, dtype=torch.bool)
    dead = GatePolicy(agent, sample=True)
    dead.begin(h)
    assert dead.run_mask(0, h, alive).float().mean() == 0
    floored = GatePolicy(agent, sample=True, floor=0.2)
    floored.begin(h)
    ran = floored.run_mask(0, h, alive)
    assert ran.float().mean() == pytest.approx(0.2, abs=0.03)
    lp = floored.log_probs[0]  # log of the distribution sampled from: 0.2 to run, 0.8 to skip
    assert torch.allclose(lp[ran], torch.log(torch.tensor(0.2)), atol=1e-4)
    assert torch.allclose(lp[~ran], torch.log(torch.tensor(0.8)), atol=1e-4)
    with pytest.raises(ValueError):
        GatePolicy(agent, floor=0.5)


def test_distillation_is_zero_on_the_teachers_own_logits():
    logits = torch.randn(16, 10)
    assert distillation(logits, logits, 2.0) == pytest.approx(0.0, abs=1e-6)
    assert distillation(logits, torch.randn(16, 10), 2.0) > 0


def test_holding_recipe_end_to_end(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "held"
    shutil.copytree(tiny_bundle, out)
    recipe = "--distill 0.5 --distill-temperature 2 --gate-hold-epochs 1 --explore-floor 0.1 --erase-prob 0"
    common = "train rl --data synthetic --device cpu --epochs 1 --limit-train 256"
    main(argv(f"{common} {recipe}", out=out, init_from=out, ckpt_dir=tmp_path / "ck"))
    rl = load_bundle(out).load_weights("rl")
    # Held for the whole (one-epoch) run: the gates are as initialised, while the backbone trained.
    assert torch.equal(rl["agent.gates.0.weight"], torch.zeros_like(rl["agent.gates.0.weight"]))
    assert torch.all(rl["agent.gates.0.bias"] == 2.0)
    static = load_bundle(out).load_weights("static")
    assert not torch.equal(rl["blocks.0.mlp.fc1.weight"], static["blocks.0.mlp.fc1.weight"])
    report = (out / "REPORT.md").read_text()
    assert (
        "0.5 of the classification loss is distillation (T = 2.0)" in report
        and "exploration floor 0.1" in report
    )
    assert "erase_prob=0.0" in report
    with pytest.raises(SystemExit):  # distillation needs a teacher
        main(argv(f"{common} --distill 0.5", out=tmp_path / "scratch", ckpt_dir=tmp_path / "ck2"))
    assert "--init-from" in capsys.readouterr().err
