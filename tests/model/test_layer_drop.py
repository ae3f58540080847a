"""LayerDrop while training, and fixed layer removal: both through the model's own per-layer loop."""

from __future__ import annotations

import pytest
import torch

from skipvit.model.policy import LayerDropPolicy, MaskPolicy, SkipLayersPolicy, layer_drop_rates


def test_rates_rise_linearly_from_zero():
    assert layer_drop_rates(5, 0.2) == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert layer_drop_rates(1, 0.3) == [0.0]
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        LayerDropPolicy([0.0, 1.0])


def test_skip_layers_matches_a_mask_that_skips_them(tiny_model, tiny_cfg):
    x = torch.randn(5, tiny_cfg.in_channels, tiny_cfg.image_size, tiny_cfg.image_size)
    dec = torch.zeros(5, tiny_cfg.depth, dtype=torch.int8)
    dec[:, 1] = 1  # SKIP
    ref = tiny_model(x, MaskPolicy(dec))
    out = tiny_model(x, SkipLayersPolicy([1]))
    torch.testing.assert_close(out.logits, ref.logits)
    assert out.executed[:, 1].sum() == 0 and out.executed[:, [0, 2, 3]].all()


def test_layer_drop_skips_each_layer_at_its_rate_and_trains(tiny_model, tiny_cfg):
    g = torch.Generator().manual_seed(0)
    rates = [0.0, 0.1, 0.5, 0.9]
    x = torch.randn(2000, tiny_cfg.in_channels, tiny_cfg.image_size, tiny_cfg.image_size)
    with torch.no_grad():
        out = tiny_model(x, LayerDropPolicy(rates, generator=g))
    dropped = 1 - out.executed.float().mean(0)
    assert dropped[0] == 0
    torch.testing.assert_close(dropped[1:], torch.tensor(rates[1:]), atol=0.04, rtol=0)
    # Gradients flow through the compacted rows into every block's parameters.
    tiny_model.train()
    loss = tiny_model(x[:64], LayerDropPolicy([0.0, 0.5, 0.5, 0.5], generator=g)).logits.logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny_model.blocks.parameters())


def test_layer_drop_is_reproducible_with_a_generator(tiny_model, tiny_cfg):
    x = torch.randn(16, tiny_cfg.in_channels, tiny_cfg.image_size, tiny_cfg.image_size)
    runs = [tiny_model(x, LayerDropPolicy([0.5] * 4, torch.Generator().manual_seed(3))) for _ in range(2)]
    assert torch.equal(runs[0].executed, runs[1].executed)
    torch.testing.assert_close(runs[0].logits, runs[1].logits)
