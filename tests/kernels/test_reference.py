"""The torch reference for row compaction over edge shapes."""

from __future__ import annotations

import pytest
import torch

from kernels import compact_rows, scatter_rows


@pytest.mark.parametrize("b", [1, 3, 64, 257])
@pytest.mark.parametrize("kind", ["all", "none", "one", "random"])
def test_compact_then_scatter(b, kind):
    torch.manual_seed(b)
    h = torch.randn(b, 5, 7)  # non-power-of-two widths
    mask = {
        "all": torch.ones(b, dtype=torch.bool),
        "none": torch.zeros(b, dtype=torch.bool),
        "one": torch.arange(b) == b // 2,
        "random": torch.rand(b) < 0.5,
    }[kind]
    rows, idx = compact_rows(h, mask)
    assert torch.equal(idx, mask.nonzero().squeeze(1))
    assert torch.equal(rows, h[mask])
    new = scatter_rows(h, idx, rows * 2 + 1)
    expect = h.clone()
    expect[mask] = h[mask] * 2 + 1
    assert torch.equal(new, expect)
    if kind != "all":
        assert new is not h  # the input stays untouched
        assert torch.equal(h[~mask], new[~mask])
