"""RL gates and REINFORCE: the math, the sign of the gradient, the thresholds, the gated forward."""

from __future__ import annotations

import pytest
import torch

from skipvit.model.config import ViTConfig
from skipvit.model.gates import GatePolicy, SkipAgent
from skipvit.model.vit import build_model
from skipvit.training.reinforce import (
    RewardConfig,
    RLConfig,
    discounted_returns,
    reinforce_losses,
    rewards,
    rl_step,
    whiten,
)


def make_model(depth=4, seed=0):
    torch.manual_seed(seed)
    cfg = ViTConfig(image_size=8, patch_size=4, dim=16, depth=depth, heads=2, num_classes=3)
    model = build_model(cfg)
    model.attach_agent(SkipAgent(cfg.dim, cfg.depth, baseline_hidden=8, init_bias=0.0))
    return model


def test_rewards_and_discounted_returns():
    correct = torch.tensor([True, False])
    executed = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    r = rewards(correct, executed, RewardConfig(eps=-1e-5))
    torch.testing.assert_close(r, torch.tensor([0.5 - 1e-5, -1.0 - 1e-5]))
    g = discounted_returns(r, 4, 0.5)
    assert g.shape == (2, 4)
    torch.testing.assert_close(g[:, -1], r)
    torch.testing.assert_close(g[:, :-1], 0.5 * g[:, 1:])


def test_whitening_keeps_shape_and_discount():
    g = discounted_returns(torch.tensor([1.0, -1.0, 0.5]), 5, 0.8)
    w = whiten(g)
    assert w.shape == (3, 5)
    assert abs(w.mean().item()) < 1e-6 and abs(w.std().item() - 1) < 1e-5
    # gamma survives whitening: early layers of the positive row get smaller returns than late ones
    assert w[0, 0] < w[0, -1]


def test_policy_loss_gradient_raises_the_log_prob_of_good_actions():
    log_probs = torch.zeros(2, 3, requires_grad=True)
    returns = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])
    pl, _ = reinforce_losses(log_probs, returns, torch.zeros(2, 3))
    pl.backward()
    assert (log_probs.grad[0] < 0).all()  # descending the loss raises log pi of rewarded actions
    assert (log_probs.grad[1] > 0).all()


def test_baseline_loss_falls():
    torch.manual_seed(0)
    agent = SkipAgent(16, 3, baseline_hidden=16)
    opt = torch.optim.Adam(agent.baselines.parameters(), lr=1e-2)
    cls = torch.randn(64, 3, 16)
    returns = cls[..., 0:1].squeeze(-1).tanh()  # a learnable function of the CLS token
    losses = []
    for _ in range(150):
        b = torch.stack([agent.baseline(j, cls[:, j]) for j in range(3)], 1)
        _, bl = reinforce_losses(torch.zeros(64, 3), returns, b)
        opt.zero_grad()
        bl.backward()
        opt.step()
        losses.append(bl.item())
    assert losses[-1] < 0.2 * losses[0]


def _train_gates(w_acc, w_layers, init_bias, steps=60):
    model = make_model()
    with torch.no_grad():
        for g in model.agent.gates:
            g.bias.fill_(init_bias)
    cfg = RLConfig(reward=RewardConfig(w_acc=w_acc, w_layers=w_layers), label_smoothing=0.0)
    opt = torch.optim.Adam(model.agent.gates.parameters(), lr=0.05)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 3, (32,))
    for _ in range(steps):
        loss, _ = rl_step(model, x, y, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        return model(x, GatePolicy(model.agent)).executed.float().sum(1).mean().item()


def test_toy_where_skipping_pays_learns_to_skip():
    assert _train_gates(w_acc=0.0, w_layers=1.0, init_bias=1.0) < 0.5


def test_toy_where_running_pays_learns_to_run():
    assert _train_gates(w_acc=0.0, w_layers=-1.0, init_bias=-1.0) > 3.5


def test_thresholds_minus_one_zero_one():
    model = make_model().eval()
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        for g in model.agent.gates:
            g.weight.zero_()
            g.bias.fill_(100.0)  # p == 1.0 exactly
        assert (
            model(x, GatePolicy(model.agent, [-1, 0, 1, 0.5])).executed.tolist()
            == [[False, True, True, True]] * 5
        )
        for g in model.agent.gates:
            g.bias.fill_(-100.0)  # p ~ 0
        assert (
            model(x, GatePolicy(model.agent, [-1, 0, 1, 0.5])).executed.tolist()
            == [[False, True, False, False]] * 5
        )


def test_per_row_thresholds_share_one_forward():
    model = make_model().eval()
    x = torch.randn(2, 1, 8, 8)
    thr = torch.tensor([[0.0] * 4, [-1.0] * 4])  # row 0 runs everything, row 1 nothing
    with torch.no_grad():
        out = model(x, GatePolicy(model.agent, thr))
        static = model(x[:1])
        nothing = model.forward_head(model.embed(x[1:]))
    assert out.executed.tolist() == [[True] * 4, [False] * 4]
    torch.testing.assert_close(out.logits[:1], static.logits)
    torch.testing.assert_close(out.logits[1:], nothing)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gated_forward_matches_masked_reference(seed):
    """Every layer runs for every row; a row keeps the new state only where its gate said run."""
    model = make_model(depth=6, seed=seed).eval()
    with torch.no_grad():
        for g in model.agent.gates:
            g.weight.normal_(0, 2.0)
            g.bias.normal_(0, 0.5)
    x = torch.randn(64, 1, 8, 8)
    thr = torch.rand(64, 6) * 0.8 + 0.1
    with torch.no_grad():
        out = model(x, GatePolicy(model.agent, thr))
        h = model.embed(x)
        ran = []
        for j in range(6):
            run = model.agent.prob(j, h[:, 0]) >= thr[:, j]
            h = torch.where(run[:, None, None], model.block(j)(h), h)
            ran.append(run)
        ref_logits = model.forward_head(h)
    ref_paths = torch.stack(ran, 1)
    assert 0 < ref_paths.float().mean() < 1  # the case is not trivial
    assert torch.equal(out.executed, ref_paths)
    assert torch.equal(out.logits.argmax(-1), ref_logits.argmax(-1))
    torch.testing.assert_close(out.logits, ref_logits, atol=1e-5, rtol=1e-5)
