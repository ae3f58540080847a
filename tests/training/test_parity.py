"""`skipvit parity` (L2 Norm Guided Adaptive Computation, Table 1): the data, the GRU with LAC
halting, a few training steps."""

from __future__ import annotations

import json

import pytest
import torch

from skipvit.cli import main
from skipvit.model.lac import lac_steps
from skipvit.training.parity import ParityConfig, ParityGRU, parity_batch


def test_parity_data():
    x, y = parity_batch(4096, 16, torch.Generator().manual_seed(0))
    assert x.shape == (4096, 16) and y.shape == (4096,)
    assert set(x.unique().tolist()) == {-1.0, 0.0, 1.0}
    nonzero = (x != 0).sum(1)
    assert nonzero.min() == 1 and nonzero.max() == 16  # k in [1, 16]
    assert torch.equal(y, (x == 1).sum(1) % 2)
    assert 0.45 < y.float().mean() < 0.55


def unrolled_norms(model, x, steps):
    """‖h_t‖ per row for t = 0..steps without halting, and every state."""
    h = x.new_zeros(x.shape[0], model.cell.hidden_size)
    hs = [h]
    for _ in range(steps):
        h = model.cell(x, h)
        hs.append(h)
    return torch.stack([s.norm(dim=1) for s in hs], 1), hs  # (B, steps + 1)


@pytest.fixture
def gru():
    torch.manual_seed(0)
    model = ParityGRU(16, 32)
    with torch.no_grad():  # livelier dynamics than at init, so rows halt at different steps
        model.cell.weight_hh.mul_(6)
        model.cell.weight_ih.mul_(3)
    return model


def test_per_example_rows_halt_on_their_own_norms_and_answer_from_the_halted_state(gru):
    x, _ = parity_batch(64, 16, torch.Generator().manual_seed(1))
    with torch.no_grad():
        norms, hs = unrolled_norms(gru, x, 10)
        logits, steps = gru(x, 10, "per-example", 0.5)
    want = [lac_steps(norms[b], 0.5) for b in range(64)]
    assert steps.tolist() == want and len(set(want)) > 1
    for b in range(64):
        torch.testing.assert_close(logits[b], gru.head(hs[want[b]][b]), atol=1e-5, rtol=1e-5)


def test_per_batch_halts_together_and_none_runs_every_step(gru):
    x, _ = parity_batch(32, 16, torch.Generator().manual_seed(2))
    with torch.no_grad():
        norms, _ = unrolled_norms(gru, x, 10)
        _, steps = gru(x, 10, "per-batch", 0.5)
        _, full = gru(x, 10, "none")
    assert steps.tolist() == [lac_steps(norms.pow(2).sum(0).sqrt(), 0.5)] * 32
    assert full.tolist() == [10] * 32


def test_config_is_checked():
    with pytest.raises(ValueError, match="mode"):
        ParityConfig(mode="per-token")
    with pytest.raises(ValueError, match="alpha"):
        ParityConfig(alpha=-1)


def test_the_command_trains_each_mode_and_prints_the_table_next_to_the_paper(tmp_path, capsys):
    out = tmp_path / "parity.json"
    main(["parity", "--train-steps", "20", "--test-size", "256", "--hidden", "32", "--out", str(out)])
    data = json.loads(out.read_text())
    assert [r["config"]["mode"] for r in data["results"]] == ["none", "per-batch", "per-example"]
    for r in data["results"]:
        t = r["test"]
        assert 0 <= t["accuracy"] <= 1 and t["n"] == 256 and sum(t["steps_histogram"]) == 256
        assert 2 <= t["mean_steps"] <= 10
        assert r["history"][-1]["step"] == 20
    assert data["results"][0]["test"]["mean_steps"] == 10
    printed = capsys.readouterr().out
    assert "| RNN + LAC per-example (α = 1) | 1.0 | 3 |" in printed and "| RNN | 1.0 | 10 |" in printed
