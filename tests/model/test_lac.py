"""LAC ("L2 Norm Guided Adaptive Computation"): the halting rule on hand-made norm sequences, and the
policy in the ViT loop."""

from __future__ import annotations

import pytest
import torch

from skipvit.model.config import ViTConfig
from skipvit.model.lac import LACPolicy, LACTracker, lac_steps, state_norm
from skipvit.model.policy import EXIT, RUN
from skipvit.model.vit import build_model

# ---------------------------------------------------------------- the rule on norm sequences


def test_first_two_steps_always_run():
    # δ_1 < 0 would halt under a bare "δ < λ", but λ_1 = 0 (the buffer holds only its zero start)
    assert lac_steps([5.0, 1.0, 0.5, 0.4], 1.0) == 2  # ... it halts only at the next decision
    assert lac_steps([0.0, 0.0, 0.0, 0.0], 1.0) == 3  # nothing ever changes: λ stays 0, never halts
    assert lac_steps([1.0, 2.0], 1.0) == 1  # T = 1: one step, nothing to decide


def test_halts_when_the_change_drops_below_alpha_times_the_spread():
    # norms 0, 1, 3, 4: δ = 1, 2, 1. Before step 3: δ_2 = 2 vs λ = α·|max{0,1} − min{0,1}| = α.
    # Before step 4: δ_3 = 1 vs λ = α·(2 − 0) = 2α.
    norms = [0.0, 1.0, 3.0, 4.0, 10.0, 20.0]
    assert lac_steps(norms, 1.0) == 3  # 2 ≥ 1 runs on; 1 < 2 halts with 3 steps
    assert lac_steps(norms, 0.5) == 5  # 1 < 1 is false; then δ_4 = 6 ≥ 1, never halts (T = 5)
    assert lac_steps(norms, 2.5) == 2  # 2 < 2.5 halts with 2 steps


def test_signed_change_a_shrinking_norm_halts():
    # the paper's δ_t < λ_t on the signed change (the reference code compares |δ|)
    assert lac_steps([0.0, 2.0, 3.0, 1.0, 5.0], 0.1) == 3
    assert lac_steps([0.0, 2.0, 3.0, 5.0, 5.0], 0.1) == 4


def test_alpha_zero_never_halts():
    assert lac_steps([0.0, 3.0, 3.1, 3.1, 3.1], 0.0) == 4


def test_tracker_per_row_halts_rows_independently():
    norms = torch.tensor([[0.0, 1.0, 3.0, 4.0], [0.0, 1.0, 3.0, 6.0]])  # (B=2, steps)
    tracker = LACTracker(norms[:, 0], 1.0)
    halts = [tracker.step(norms[:, t]).tolist() for t in range(4)]
    assert halts == [[False, False], [False, False], [False, False], [True, False]]


@pytest.mark.parametrize("seed", range(20))
def test_a_smaller_alpha_never_gives_fewer_steps(seed):
    g = torch.Generator().manual_seed(seed)
    norms = torch.cumsum(torch.randn(10, generator=g).abs() * torch.rand(10, generator=g), 0)  # a noisy climb
    norms = norms + torch.randn(10, generator=g) * 0.3  # sometimes shrinking
    steps = [lac_steps(norms, a) for a in (0.0, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.5)]
    assert steps == sorted(steps, reverse=True), steps


def test_bad_alpha_and_mode_are_refused():
    with pytest.raises(ValueError, match="alpha"):
        LACPolicy(-0.1)
    with pytest.raises(ValueError, match="alpha"):
        LACPolicy(float("nan"))
    with pytest.raises(ValueError, match="Hint"):
        LACPolicy(0.5, "per-token")
    with pytest.raises(ValueError, match="one alpha"):
        LACPolicy([0.5, 0.6], "per-batch")


# ---------------------------------------------------------------- the policy on hand-made states


def states(norms_per_row: list[list[float]]) -> list[torch.Tensor]:
    """h_t (B, T=3, D=4) whose per-row norms are exactly the given sequences."""
    n = torch.tensor(norms_per_row)  # (B, steps)
    hs = []
    for t in range(n.shape[1]):
        h = torch.zeros(n.shape[0], 3, 4)  # (B, T, D)
        h[:, 1, 2] = n[:, t]
        hs.append(h)
    return hs


def run_policy(policy, hs):
    b = hs[0].shape[0]
    policy.begin(hs[0])
    alive = torch.ones(b, dtype=torch.bool)
    steps = torch.full((b,), len(hs) - 1)
    for j, h in enumerate(hs[:-1]):
        d = policy.decide(j, h, alive)
        newly = alive & (d == EXIT)
        steps[newly] = j
        alive &= ~newly
        assert ((d == RUN) | (d == EXIT)).all()
    return steps.tolist()


def test_per_example_rows_stop_independently():
    rows = [[0.0, 1.0, 3.0, 4.0, 9.0, 10.0], [0.0, 1.0, 3.0, 6.0, 7.0, 10.0], [0.0, 5.0, 5.5, 9.0, 9.5, 10.0]]
    got = run_policy(LACPolicy(1.0, "per-example"), states(rows))
    assert got == [lac_steps(r, 1.0) for r in rows] == [3, 4, 2]


def test_per_batch_halts_together_on_the_batch_norm():
    rows = [[0.0, 1.0, 3.0, 4.0, 9.0, 10.0], [0.0, 1.0, 3.0, 6.0, 7.0, 10.0], [0.0, 5.0, 5.5, 9.0, 9.5, 10.0]]
    batch_norms = torch.tensor(rows).pow(2).sum(0).sqrt()  # ‖h‖ of the whole (B, T, D) batch
    got = run_policy(LACPolicy(1.0, "per-batch"), states(rows))
    assert len(set(got)) == 1 and got[0] == lac_steps(batch_norms, 1.0)
    hs = states(rows)
    assert torch.allclose(state_norm(hs[2], "per-batch"), torch.linalg.vector_norm(hs[2]).reshape(1))


def test_per_row_alphas_equal_one_policy_per_alpha():
    rows = [[0.0, 1.0, 3.0, 4.0, 9.0, 10.0]] * 3
    got = run_policy(LACPolicy([2.5, 1.0, 0.4], "per-example"), states(rows))
    assert got == [lac_steps(rows[0], a) for a in (2.5, 1.0, 0.4)] == [2, 3, 5]


# ---------------------------------------------------------------- in the ViT loop


@pytest.fixture
def lively(tiny_model):
    """The tiny model with its block weights scaled up: its norms climb unevenly, so LAC halts rows
    after 2, 3 or 4 layers (at init every row of the tiny model halts after 2)."""
    with torch.no_grad():
        for p in tiny_model.blocks.parameters():
            if p.dim() > 1:
                p.mul_(8)
    return tiny_model


def layer_norms(model, x):
    """‖h_j‖ per row for j = 0..L (h_0 = embedding output), by the plain loop."""
    h = model.embed(x)
    norms = [state_norm(h, "per-example")]
    for j in range(model.depth):
        h = model.block(j)(h)
        norms.append(state_norm(h, "per-example"))
    return torch.stack(norms, 1)  # (B, L + 1)


@pytest.mark.parametrize("compaction", ["exact", "fixed"])
def test_per_example_in_the_model_matches_the_rule_and_answers_from_the_halted_state(lively, compaction):
    tiny_model = lively
    torch.manual_seed(0)
    x = torch.randn(16, 1, 16, 16)
    with torch.no_grad():
        norms = layer_norms(tiny_model, x)
        for alpha in (0.4, 0.5, 0.7):
            out = tiny_model(x, LACPolicy(alpha), compaction=compaction)
            want = [lac_steps(norms[b], alpha) for b in range(16)]
            assert out.layers_executed.tolist() == want and len(set(want)) > 1
            for b in range(16):  # ran layers 0 .. k-1 and nothing after
                k = want[b]
                assert out.executed[b].tolist() == [True] * k + [False] * (tiny_model.depth - k)
                h = tiny_model.embed(x[b : b + 1])
                for j in range(k):
                    h = tiny_model.block(j)(h)
                torch.testing.assert_close(
                    out.logits[b : b + 1], tiny_model.forward_head(h), atol=1e-5, rtol=1e-5
                )


def test_per_example_is_batch_independent(lively):
    tiny_model = lively
    torch.manual_seed(1)
    x = torch.randn(64, 1, 16, 16)
    with torch.no_grad():
        big = tiny_model(x, LACPolicy(0.5))
        assert len(set(big.layers_executed.tolist())) > 1
        for b in range(64):
            one = tiny_model(x[b : b + 1], LACPolicy(0.5))
            assert torch.equal(one.executed[0], big.executed[b])
            torch.testing.assert_close(one.logits[0], big.logits[b], atol=1e-5, rtol=1e-5)


def test_per_batch_in_the_model_halts_every_row_at_once(lively):
    tiny_model = lively
    torch.manual_seed(2)
    x = torch.randn(8, 1, 16, 16)
    with torch.no_grad():
        norms = layer_norms(tiny_model, x).pow(2).sum(0).sqrt()  # (L + 1,): the batch's norm
        out = tiny_model(x, LACPolicy(0.5, "per-batch"))
        alone = tiny_model(x, LACPolicy(0.5, "per-example"))
    k = lac_steps(norms, 0.5)
    assert out.layers_executed.tolist() == [k] * 8
    assert len(set(alone.layers_executed.tolist())) > 1  # per example, the same rows would not agree


def test_lac_runs_on_a_uvit():
    cfg = ViTConfig(image_size=8, patch_size=4, dim=16, depth=6, heads=2, num_classes=3, shared_layers=True)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert len(model.blocks) == 1
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        norms = layer_norms(model, x)
        out = model(x, LACPolicy(0.3))
    assert out.layers_executed.tolist() == [lac_steps(norms[b], 0.3) for b in range(5)]
