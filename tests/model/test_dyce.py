"""DyCE: exit heads, the exit rule inside the model's loop, and compute accounting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skipvit.model.dyce import (
    DyCEConfig,
    DyCEPolicy,
    ExitChoice,
    choices,
    flops_by_exit,
    relative_compute,
    static_flops,
)
from skipvit.model.exits import EXIT_TYPES, ExitSet, attach_exits, exit_flops, exits_of, pooled_tokens
from skipvit.model.flops import block_flops, patch_embed_flops
from skipvit.model.policy import EXIT, RUN


def _sharp_exits(cfg, positions=(1, 2, 3), types=tuple(EXIT_TYPES), scale=8.0):
    """Random exit heads with large output weights, so confidences spread over (1/C, 1)."""
    torch.manual_seed(1)
    exits = ExitSet(cfg, positions, types).eval()
    with torch.no_grad():
        for head in exits.heads.values():
            last = head.fc2 if head.kind.hidden else head.fc
            last.weight.normal_(0, scale / last.weight.shape[1] ** 0.5)
    return exits


def _states(model, x):
    """The hidden state after every layer of a static forward: list of (B, T, D), index k = after k."""
    h = model.embed(x)  # (B, T, D)
    out = [h]
    for j in range(model.depth):
        h = model.block(j)(h)
        out.append(h)
    return out


def _reference(model, exits, config: DyCEConfig, x):
    """The exit rule written out on full-batch states: (answered at (B,), logits (B, C))."""
    states = _states(model, x)
    b, depth = x.shape[0], model.depth
    at = torch.full((b,), depth)
    logits = model.forward_head(states[depth])  # (B, C)
    for e in reversed(config.exits):  # the first exit that fires wins, so apply the latest first
        z = exits.head(e.after, e.type)(states[e.after])  # (B, C)
        fire = z.softmax(-1).amax(-1) > e.threshold
        at = torch.where(fire, e.after, at)
        logits = torch.where(fire[:, None], z, logits)
    return at, logits, states


# ---------------------------------------------------------------- heads


def test_exit_types_read_cls_and_mean_and_count_their_flops(tiny_cfg):
    exits = ExitSet(tiny_cfg, [2], EXIT_TYPES)
    h = torch.randn(5, tiny_cfg.num_tokens, tiny_cfg.dim)  # (B, T, D)
    pooled = pooled_tokens(h)  # (B, 2, D)
    assert torch.equal(pooled[:, 0], h[:, 0]) and torch.allclose(pooled[:, 1], h.mean(1))
    for t in EXIT_TYPES:
        head = exits.head(2, t)
        assert torch.allclose(head(h), head.from_pooled(pooled), atol=1e-6)
        assert head(h).shape == (5, tiny_cfg.num_classes)
        # FLOPs: 2 x every weight-matrix entry (one multiply-add each) + the token mean's additions.
        macs = sum(m.weight.numel() for m in head.modules() if isinstance(m, torch.nn.Linear))
        pool = 0 if EXIT_TYPES[t].pool == "cls" else tiny_cfg.num_tokens * tiny_cfg.dim
        assert exit_flops(tiny_cfg, t) == 2 * macs + pool
    assert exit_flops(tiny_cfg, "linear") < exit_flops(tiny_cfg, "mlp-s") < exit_flops(tiny_cfg, "mlp-m")


def test_exit_set_round_trips_through_a_state_dict(tiny_cfg, tiny_model):
    exits = ExitSet(tiny_cfg, [1, 3], ["linear", "mlp-m"])
    attach_exits(tiny_model, exits)
    state = tiny_model.state_dict()
    assert {k for k in state if k.startswith("exits.")} and exits_of(tiny_model) is exits
    again = ExitSet.from_state(tiny_cfg, state)
    assert again.keys == exits.keys and again.positions == [1, 3] and again.types == ["linear", "mlp-m"]
    assert (
        ExitSet.from_state(tiny_cfg, {k: v for k, v in state.items() if not k.startswith("exits.")}) is None
    )
    with pytest.raises(ValueError, match=r"after layer 1 \.\. 3"):
        ExitSet(tiny_cfg, [4], ["linear"])
    with pytest.raises(ValueError, match="Hint: choose from"):
        ExitSet(tiny_cfg, [1], ["huge"])


# ---------------------------------------------------------------- the exit rule


@pytest.mark.parametrize("compaction", ["exact", "fixed"])
def test_rows_leave_at_the_first_exit_that_clears_its_threshold(tiny_cfg, tiny_model, compaction):
    exits = _sharp_exits(tiny_cfg)
    x = torch.randn(64, 1, 16, 16)
    with torch.no_grad():
        states = _states(tiny_model, x)
        conf = {k: exits.head(k, t)(states[k]).softmax(-1).amax(-1) for k, t in [(1, "mlp-s"), (3, "linear")]}
    # Thresholds at the median: about half the rows clear each exit.
    config = choices([(1, "mlp-s", float(conf[1].median())), (3, "linear", float(conf[3].median()))])
    with torch.no_grad():
        out = tiny_model(x, DyCEPolicy(exits, config), compaction=compaction)
        at, logits, _ = _reference(tiny_model, exits, config, x)
    assert torch.equal(out.exit_layer, at)
    assert set(at.tolist()) == {1, 3, 4}  # some rows leave at each exit, some reach the head
    assert torch.allclose(out.logits, logits, atol=1e-5)
    # A row runs exactly the layers before its exit.
    assert torch.equal(out.executed, torch.arange(tiny_cfg.depth)[None, :] < at[:, None])


def test_exit_heads_see_only_the_rows_that_reach_them(tiny_cfg, tiny_model):
    exits = _sharp_exits(tiny_cfg)
    seen: dict[int, int] = {}
    for k in (1, 2):
        exits.head(k, "linear").register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, i[0].shape[0]))
    x = torch.randn(40, 1, 16, 16)
    with torch.no_grad():
        c1 = exits.head(1, "linear")(_states(tiny_model, x)[1]).softmax(-1).amax(-1)
        config = choices([(1, "linear", float(c1.median())), (2, "linear", 0.99)])
        out = tiny_model(x, DyCEPolicy(exits, config))
    left_at_1 = int((out.exit_layer == 1).sum())
    assert 0 < left_at_1 < 40
    assert seen == {1: 40, 2: 40 - left_at_1}


def test_policy_decides_on_alive_rows_only_and_answers_from_its_logits(tiny_cfg):
    exits = _sharp_exits(tiny_cfg, positions=[2], types=["linear"])
    policy = DyCEPolicy(exits, choices([(2, "linear", 0.5)]))
    h = torch.randn(6, tiny_cfg.num_tokens, tiny_cfg.dim)  # (B, T, D)
    alive = torch.tensor([True, True, False, True, True, False])
    policy.begin(h)
    assert (policy.decide(1, h, alive) == RUN).all()  # no exit before layer 1
    assert policy.exit_logits(1, h, torch.arange(6)) is None
    decision = policy.decide(2, h, alive)
    with torch.no_grad():
        z = exits.head(2, "linear")(h)  # (B, C)
    fire = z.softmax(-1).amax(-1) > 0.5
    assert torch.equal(decision == EXIT, fire & alive)
    rows = (decision == EXIT).nonzero().squeeze(1)
    assert torch.allclose(policy.exit_logits(2, h, rows), z[rows], atol=1e-6)


def test_config_params_round_trip_and_errors(tiny_cfg):
    config = choices([(3, "mlp-m", 0.9), (1, "linear", 0.75)])
    assert [e.after for e in config.exits] == [1, 3]
    assert DyCEConfig.from_params(config.to_params()) == config
    assert config.describe() == "1:linear>0.75 3:mlp-m>0.9"
    with pytest.raises(ValueError, match="one exit per position"):
        DyCEConfig((ExitChoice(2, "linear", 0.5), ExitChoice(2, "mlp-s", 0.5)))
    with pytest.raises(ValueError, match="Hint"):
        DyCEConfig.from_params({"thresholds": [0.5]})
    exits = ExitSet(tiny_cfg, [1], ["linear"])
    with pytest.raises(ValueError, match="lacks; Hint"):
        DyCEPolicy(exits, choices([(2, "linear", 0.5)]))


# ---------------------------------------------------------------- compute accounting


def test_compute_accounting_on_a_hand_built_case(tiny_cfg):
    # tiny: 16x16 images, patch 4 -> N = 16, T = 17; D = 32; hidden 64; 4 classes; depth 4.
    assert patch_embed_flops(tiny_cfg) == 2 * 16 * 32 * 16
    assert block_flops(tiny_cfg) == 2 * (17 * 32 * 96 + 2 * 17 * 17 * 32 + 17 * 32 * 32 + 2 * 17 * 32 * 64)
    assert exit_flops(tiny_cfg, "linear") == 2 * 32 * 4
    assert exit_flops(tiny_cfg, "mlp-s") == 17 * 32 + 2 * (32 * 32 + 32 * 4)
    embed, block, head = 16_384, 315_520, 256
    lin, mlp_s = 256, 2_848
    config = choices([(1, "linear", 0.9), (3, "mlp-s", 0.8)])
    table = flops_by_exit(tiny_cfg, config)
    assert table[1] == embed + 1 * block + lin  # left at the first exit: its head only
    assert table[3] == embed + 3 * block + lin + mlp_s  # passed the first exit, left at the second
    assert table[4] == embed + 4 * block + lin + mlp_s + head  # passed both, the backbone's head answers
    static = embed + 4 * block + head
    assert static_flops(tiny_cfg) == static
    rows = [1, 3, 4, 4]
    expected = (table[1] + table[3] + 2 * table[4]) / 4 / static
    assert relative_compute(tiny_cfg, config, torch.tensor(rows)) == pytest.approx(expected)
    # No exits: exactly static.
    assert flops_by_exit(tiny_cfg, DyCEConfig())[4] == static
    assert relative_compute(tiny_cfg, DyCEConfig(), np.array([4, 4])) == pytest.approx(1.0)
