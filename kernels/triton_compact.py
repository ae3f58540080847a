"""Triton row compaction: gather the rows whose mask is set, scatter rows back by index.

Imported lazily by ``kernels.dispatch`` (never at package import): Triton is optional. Whether
the kernels run compiled (CUDA tensors) or in Triton's interpreter (CPU tensors, for tests) is
fixed when this module is imported: set ``TRITON_INTERPRET=1`` before importing it to get the
interpreter.

Compaction writes one destination slot per program. Slot ``k`` holds the row with the
``(k+1)``-th set mask bit; the program finds it without any host round trip by scanning the
whole mask in ``BLOCK_B`` chunks: with ``c`` the inclusive prefix count (``tl.cumsum``), the
source index is the number of positions with ``c <= k`` (``B`` when fewer than ``k+1`` bits are
set). Rows are viewed as ``(B, W)`` and copied in ``BLOCK_W`` tiles, so any width works.

Slots at or past the count are padding: their row is zeros and their index is ``B`` (one past the
last row), and the scatter kernel skips every index ``>= B``. That is the fixed-capacity
contract shared with ``kernels.reference.compact_rows_fixed_ref``.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

MIN_BLOCK_B, MAX_BLOCK_B = 128, 1024  # mask entries scanned per step; larger batches loop over chunks
MAX_BLOCK_W = 2048  # row elements copied per step


@triton.jit(do_not_specialize=["B", "S"])  # no recompiles as batch sizes vary (beyond the BLOCK_B buckets)
def _compact_kernel(
    h_ptr,  # (B, W) contiguous
    mask_ptr,  # (B,) uint8
    rows_ptr,  # (S, W) out
    idx_ptr,  # (S,) int64 out
    count_ptr,  # () int64 out: number of set bits
    B,
    W,
    S,
    BLOCK_B: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    k = tl.program_id(0)  # destination slot (the grid has max(S, 1) programs)
    offs_b = tl.arange(0, BLOCK_B)
    carry = k * 0  # set bits before the current chunk
    src = k * 0  # positions whose inclusive prefix count is <= k
    for b0 in range(0, B, BLOCK_B):
        in_b = b0 + offs_b < B
        m = tl.load(mask_ptr + b0 + offs_b, mask=in_b, other=0).to(tl.int32)  # (BLOCK_B,)
        c = tl.cumsum(m, axis=0) + carry  # (BLOCK_B,) inclusive prefix count
        src += tl.sum(((c <= k) & in_b).to(tl.int32), axis=0)
        carry += tl.sum(m, axis=0)
    tl.store(count_ptr, carry.to(tl.int64), mask=k == 0)
    tl.store(idx_ptr + k, src.to(tl.int64), mask=k < S)
    # Masks are built from per-row element counts (a vector compare against a scalar):
    # padding slots (src == B) read nothing and store zeros; the spare program (S == 0) stores nothing.
    w_src = tl.where(src < B, W, 0)
    w_dst = tl.where(k < S, W, 0)
    src_row = src.to(tl.int64) * W
    dst_row = k.to(tl.int64) * W
    for w0 in range(0, W, BLOCK_W):
        offs_w = w0 + tl.arange(0, BLOCK_W)
        x = tl.load(h_ptr + src_row + offs_w, mask=offs_w < w_src, other=0)
        tl.store(rows_ptr + dst_row + offs_w, x, mask=offs_w < w_dst)


@triton.jit(do_not_specialize=["B"])
def _scatter_kernel(
    out_ptr,  # (B, W) contiguous, a copy of h
    idx_ptr,  # (S,) int64
    rows_ptr,  # (S, W) contiguous
    B,
    W,
    BLOCK_W: tl.constexpr,
):
    k = tl.program_id(0)  # source slot
    dst = tl.load(idx_ptr + k)  # int64
    w_dst = tl.where((dst >= 0) & (dst < B), W, 0)  # padding slots point at B: nothing to write
    dst_row = dst * W
    src_row = k.to(tl.int64) * W
    for w0 in range(0, W, BLOCK_W):
        offs_w = w0 + tl.arange(0, BLOCK_W)
        x = tl.load(rows_ptr + src_row + offs_w, mask=offs_w < w_dst, other=0)
        tl.store(out_ptr + dst_row + offs_w, x, mask=offs_w < w_dst)


# The kernels were decorated for the interpreter iff TRITON_INTERPRET was set at import.
INTERPRET = type(_compact_kernel).__name__ == "InterpretedFunction"


def _blocks(b: int, w: int, block_b: int | None) -> tuple[int, int]:
    block_b = block_b or min(MAX_BLOCK_B, max(MIN_BLOCK_B, triton.next_power_of_2(b)))
    return block_b, min(MAX_BLOCK_W, triton.next_power_of_2(max(w, 1)))


def compact_rows_fixed(
    h: Tensor, mask: Tensor, capacity: int, *, block_b: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """The first ``capacity`` rows of ``h`` (B, ...) whose ``mask`` (B,) is set, without a host sync.

    Returns rows (capacity, ...), idx (capacity,) int64 and count () int64 on the device. Slots
    at or past the count hold zeros and index ``B``. ``count > capacity`` means rows were left
    out. ``block_b`` overrides the mask chunk (tests use it to exercise the chunk loop).
    """
    b, w = h.shape[0], math.prod(h.shape[1:])
    flat = h.contiguous().view(b, w)  # (B, W)
    rows = torch.empty((capacity, *h.shape[1:]), dtype=h.dtype, device=h.device)  # (S, ...)
    idx = torch.empty(capacity, dtype=torch.int64, device=h.device)  # (S,)
    count = torch.empty((), dtype=torch.int64, device=h.device)
    block_b, block_w = _blocks(b, w, block_b)
    m = (mask if mask.dtype == torch.bool else mask != 0).contiguous().view(torch.uint8)  # (B,)
    _compact_kernel[(max(capacity, 1),)](
        flat, m, rows, idx, count, b, w, capacity, BLOCK_B=block_b, BLOCK_W=block_w
    )
    return rows, idx, count


def scatter_rows_fixed(h: Tensor, idx: Tensor, rows: Tensor) -> Tensor:
    """A copy of ``h`` (B, ...) with ``rows`` (S, ...) written at ``idx`` (S,); indices >= B are skipped."""
    b = h.shape[0]
    out = h.clone(memory_format=torch.contiguous_format)  # (B, ...)
    s = rows.shape[0]
    if s == 0:
        return out
    w = math.prod(h.shape[1:])
    src = rows.to(h.dtype).contiguous().view(s, w)  # (S, W)
    _, block_w = _blocks(b, w, None)
    _scatter_kernel[(s,)](out.view(b, w), idx.contiguous(), src, b, w, BLOCK_W=block_w)
    return out


def compact_rows(h: Tensor, mask: Tensor, *, block_b: int | None = None) -> tuple[Tensor, Tensor]:
    """Rows of ``h`` (B, ...) where ``mask`` (B,) is set, in order, and their indices (R,).

    Exact shape: reads the count R on the host first (one sync), like ``nonzero`` does.
    """
    r = int(mask.sum())  # the host sync: the output shape depends on it
    if r == h.shape[0]:
        return h, torch.arange(r, device=h.device)  # every row runs: no copy, as the reference
    rows, idx, _ = compact_rows_fixed(h, mask, r, block_b=block_b)
    return rows, idx  # (R, ...), (R,)


def scatter_rows(h: Tensor, idx: Tensor, rows: Tensor) -> Tensor:
    """A copy of ``h`` with ``rows`` (R, ...) written at ``idx`` (R,); ``rows`` itself if every row ran."""
    if rows.shape[0] == h.shape[0]:
        return rows  # every row ran: same contract as the reference
    return scatter_rows_fixed(h, idx, rows)
