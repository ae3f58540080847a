"""The Triton compaction kernels against the torch reference, bit for bit.

On CPU the kernels run in Triton's interpreter (``tests/kernels/conftest.py`` sets
``TRITON_INTERPRET=1``), which costs a few milliseconds per program (one program per output
row), so the shapes pair large batches with narrow rows and sparse masks, wide rows with small
batches. On CUDA the same tests run the compiled kernels.
"""

from __future__ import annotations

import pytest
import torch

from skipvit.kernels.reference import (
    compact_rows_fixed_ref,
    compact_rows_ref,
    scatter_rows_fixed_ref,
    scatter_rows_ref,
)

try:
    import skipvit.kernels.triton_compact as tc
except ImportError:  # triton is a dev dependency (Linux x86_64); torch on CUDA ships it
    pytest.skip("triton is not installed", allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    DEVICE == "cpu" and not tc.INTERPRET,
    reason="kernels.triton_compact was imported without TRITON_INTERPRET=1 and there is no GPU",
)


def make(b: int, inner: tuple[int, ...], kind: str, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed + b)
    h = torch.randn(b, *inner, generator=g).to(dtype)
    mask = {
        "all": torch.ones(b, dtype=torch.bool),
        "none": torch.zeros(b, dtype=torch.bool),
        "one": torch.arange(b) == b // 2,
        "last": torch.arange(b) == b - 1,
        "random": torch.rand(b, generator=g) < 0.5,
        "sparse": torch.rand(b, generator=g) < 0.04,
    }[kind]
    return h.to(DEVICE), mask.to(DEVICE)


def check_exact(h, mask):
    rows, idx = tc.compact_rows(h, mask)
    ref_rows, ref_idx = compact_rows_ref(h, mask)
    assert idx.dtype == torch.int64 and torch.equal(idx, ref_idx)
    assert rows.dtype == h.dtype and rows.shape == ref_rows.shape and torch.equal(rows, ref_rows)
    out = tc.scatter_rows(h, idx, rows * 2 + 1)
    ref_out = scatter_rows_ref(h, ref_idx, ref_rows * 2 + 1)
    assert torch.equal(out, ref_out)
    if rows.shape[0] < h.shape[0]:
        assert out is not h and torch.equal(out[~mask], h[~mask])  # the input stays untouched


def check_fixed(h, mask, capacity, **kw):
    rows, idx, count = tc.compact_rows_fixed(h, mask, capacity, **kw)
    ref_rows, ref_idx, ref_count = compact_rows_fixed_ref(h, mask, capacity)
    assert (
        count.shape == () and count.dtype == torch.int64 and int(count) == int(ref_count) == int(mask.sum())
    )
    assert torch.equal(idx, ref_idx) and (idx[int(count) :] == h.shape[0]).all()  # padding slots point at B
    assert rows.shape == (capacity, *h.shape[1:]) and torch.equal(rows, ref_rows)
    new = rows * 2 + 1  # padding slots hold 1s now: the scatter must drop them
    out = tc.scatter_rows_fixed(h, idx, new)
    assert torch.equal(out, scatter_rows_fixed_ref(h, ref_idx, new))
    return out


# Small batches: every mask kind, fp32 and bf16, widths 1, 3, 35 (5x7), 97 and 4800 (the shipped 50x96).
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["all", "none", "one", "random"])
@pytest.mark.parametrize(("b", "inner"), [(1, (1,)), (2, (3,)), (7, (97,)), (5, (50, 96)), (64, (5, 7))])
def test_exact_small(b, inner, kind, dtype):
    check_exact(*make(b, inner, kind, dtype))


# Large batches with narrow rows (the interpreter's cost grows with the rows it writes).
@pytest.mark.parametrize("kind", ["all", "none", "one", "last", "random", "sparse"])
@pytest.mark.parametrize("b", [257, 1024])
def test_exact_large_batch(b, kind):
    check_exact(*make(b, (3,), kind))


def test_exact_dense_mid_batch_bf16():
    check_exact(*make(257, (2,), "random", torch.bfloat16))


@pytest.mark.parametrize("kind", ["all", "none", "one", "random"])
@pytest.mark.parametrize(("b", "inner"), [(1, (1,)), (7, (97,)), (3, (50, 96)), (64, (5, 7))])
def test_fixed_capacities(b, inner, kind):
    h, mask = make(b, inner, kind)
    r = int(mask.sum())
    # Under the count (rows left out), exactly the count, above it (padding), and every row.
    for capacity in sorted({0, 1, max(r - 1, 0), r, min(r + 2, b), b}):
        check_fixed(h, mask, capacity)


def test_fixed_bf16():
    h, mask = make(64, (50,), "random", torch.bfloat16)
    check_fixed(h, mask, 40)


@pytest.mark.parametrize("kind", ["all", "random", "last"])
def test_fixed_large_batch_small_capacity(kind):
    """The whole 1024-row mask is scanned by every program, whatever the capacity."""
    h, mask = make(1024, (3,), kind)
    check_fixed(h, mask, 6)


@pytest.mark.parametrize(("b", "block_b"), [(257, 64), (2500, None)])
def test_mask_longer_than_one_chunk(b, block_b):
    """Batches beyond one BLOCK_B chunk carry the prefix count from chunk to chunk."""
    h, mask = make(b, (2,), "random")
    mask[-1] = True  # a row in the last, partial chunk
    rows, idx, count = tc.compact_rows_fixed(h, mask, 5, block_b=block_b)
    expect = mask.nonzero().squeeze(1)
    assert int(count) == expect.numel() and torch.equal(idx, expect[:5])
    assert torch.equal(rows, h[expect[:5]])
    last = torch.zeros_like(mask)
    last[-1] = True
    rows, idx, count = tc.compact_rows_fixed(h, last, 2, block_b=block_b)
    assert int(count) == 1 and idx.tolist() == [b - 1, b] and torch.equal(rows[0], h[-1])
    assert (rows[1] == 0).all()


def test_non_contiguous_input_and_empty_batch():
    h, mask = make(6, (4, 3), "random")
    check_exact(h.transpose(1, 2), mask)  # (B, 3, 4) view: copied to contiguous first
    empty = torch.zeros(0, 3, device=DEVICE)
    rows, idx, count = tc.compact_rows_fixed(empty, torch.zeros(0, dtype=torch.bool, device=DEVICE), 2)
    assert int(count) == 0 and idx.tolist() == [0, 0] and rows.shape == (2, 3) and (rows == 0).all()


def test_scatter_round_trip_restores_input():
    h, mask = make(64, (50,), "random")
    rows, idx, _count = tc.compact_rows_fixed(h, mask, 64)
    assert torch.equal(
        tc.scatter_rows_fixed(torch.zeros_like(h), idx, rows), torch.where(mask[:, None], h, 0)
    )
    assert torch.equal(tc.scatter_rows_fixed(h, idx, rows), h)
