"""The analytic FLOP counter against a hand computation and against torch's own FLOP counter."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from skipvit.model.config import ViTConfig
from skipvit.model.flops import block_flops, forward_flops, gate_flops, head_flops, patch_embed_flops
from skipvit.model.gates import GatePolicy, SkipAgent
from skipvit.model.policy import MaskPolicy
from skipvit.model.vit import PRESETS


def test_tiny_config_by_hand(tiny_cfg):
    # tiny: 16x16x1 images, patch 4 -> N = 16 patches, T = 17 tokens, D = 32, MLP 64, 4 classes
    assert patch_embed_flops(tiny_cfg) == 2 * (16 * 32 * 1 * 4 * 4)  # 16,384
    qkv, scores, weighted, proj = 17 * 32 * 96, 17 * 17 * 32, 17 * 17 * 32, 17 * 32 * 32
    fc1, fc2 = 17 * 32 * 64, 17 * 64 * 32
    assert block_flops(tiny_cfg) == 2 * (qkv + scores + weighted + proj + fc1 + fc2) == 315_520
    assert gate_flops(tiny_cfg) == 64
    assert head_flops(tiny_cfg) == 2 * 32 * 4 == 256
    static = forward_flops(tiny_cfg, tiny_cfg.depth)
    assert static.total == 16_384 + 4 * 315_520 + 256 == 1_278_720
    assert static.gates == 0


def test_shipped_config_by_hand():
    cfg = ViTConfig(**PRESETS["fmnist-9"])  # 28x28x1, patch 4 -> N = 49, T = 50; D = 96, MLP 192
    assert patch_embed_flops(cfg) == 150_528
    assert block_flops(cfg) == 2 * (50 * 96 * 288 + 2 * 50 * 50 * 96 + 50 * 96 * 96 + 2 * 50 * 96 * 192)
    assert block_flops(cfg) == 8_332_800
    assert forward_flops(cfg, 9).total == 150_528 + 9 * 8_332_800 + 1_920 == 75_147_648
    # a point at 4.5 mean layers with all 9 gates evaluated
    point = forward_flops(cfg, 4.5, 9)
    assert point.total == pytest.approx(150_528 + 4.5 * 8_332_800 + 9 * 192 + 1_920)
    assert (
        forward_flops(cfg, 9).total / point.total
        == pytest.approx(75_147_648 / 37_651_776)
        == pytest.approx(1.99585, abs=1e-5)
    )


def test_negative_counts_are_refused(tiny_cfg):
    with pytest.raises(ValueError):
        forward_flops(tiny_cfg, -1)


def _counted(model, x, policy=None) -> float:
    # The math SDPA backend runs attention as two bmm's, which torch's counter sees.
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        model(x, policy)
    return fc.get_total_flops() / x.shape[0]


def test_matches_torch_flop_counter_static_gated_and_skipping(tiny_cfg, tiny_model):
    x = torch.randn(3, 1, 16, 16)
    assert _counted(tiny_model, x) == forward_flops(tiny_cfg, 4).total
    tiny_model.attach_agent(SkipAgent(tiny_cfg.dim, tiny_cfg.depth))
    gates_on = GatePolicy(tiny_model.agent, 0.0)  # every gate evaluated, every layer run
    assert _counted(tiny_model, x, gates_on) == forward_flops(tiny_cfg, 4, gates_evaluated=4).total
    # every row skips layers 1 and 3: two blocks run, no gates
    mask = torch.tensor([[0, 1, 0, 1]] * 3, dtype=torch.int8)
    assert _counted(tiny_model, x, MaskPolicy(mask)) == forward_flops(tiny_cfg, 2).total
