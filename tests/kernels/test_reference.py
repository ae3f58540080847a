"""The torch reference for row compaction over edge shapes."""

from __future__ import annotations

import pytest
import torch

from skipvit.kernels import compact_rows, scatter_rows
from skipvit.kernels.reference import compact_rows_fixed_ref, compact_rows_ref, scatter_rows_fixed_ref


def make_mask(b: int, kind: str) -> torch.Tensor:
    """A (B,) run mask: every row, none, the middle one, or about half at random."""
    return {
        "all": torch.ones(b, dtype=torch.bool),
        "none": torch.zeros(b, dtype=torch.bool),
        "one": torch.arange(b) == b // 2,
        "random": torch.rand(b) < 0.5,
    }[kind]


@pytest.mark.parametrize("b", [1, 3, 64, 257])
@pytest.mark.parametrize("kind", ["all", "none", "one", "random"])
def test_compact_then_scatter(b, kind):
    torch.manual_seed(b)
    h = torch.randn(b, 5, 7)  # non-power-of-two widths
    mask = make_mask(b, kind)
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


@pytest.mark.parametrize("b", [1, 7, 64])
@pytest.mark.parametrize("kind", ["all", "none", "one", "random"])
def test_fixed_reference_agrees_with_exact(b, kind):
    torch.manual_seed(b)
    h = torch.randn(b, 5, 7)
    mask = make_mask(b, kind)
    rows, idx = compact_rows_ref(h, mask)
    r = rows.shape[0]
    for capacity in sorted({0, 1, max(r - 1, 0), r, b}):
        f_rows, f_idx, count = compact_rows_fixed_ref(h, mask, capacity)
        n = min(r, capacity)
        assert count.item() == r and f_rows.shape == (capacity, 5, 7)
        assert torch.equal(f_idx[:n], idx[:n]) and (f_idx[n:] == b).all()  # padding points at row B
        assert torch.equal(f_rows[:n], rows[:n]) and (f_rows[n:] == 0).all()
        out = scatter_rows_fixed_ref(h, f_idx, f_rows * 2 + 1)
        expect = h.clone()
        expect[idx[:n]] = rows[:n] * 2 + 1  # the first n running rows updated, padding dropped
        assert torch.equal(out, expect)


def test_fixed_reference_never_reads_the_device():
    """On the meta device any data-dependent host read raises: the fixed path has none."""
    h = torch.empty(9, 3, 5, device="meta")
    mask = torch.empty(9, dtype=torch.bool, device="meta")
    rows, idx, count = compact_rows_fixed_ref(h, mask, 4)
    assert rows.shape == (4, 3, 5) and idx.shape == (4,) and count.shape == ()
    assert scatter_rows_fixed_ref(h, idx, rows).shape == (9, 3, 5)
    with pytest.raises((NotImplementedError, RuntimeError)):
        compact_rows_ref(h, mask)  # nonzero must read the mask
