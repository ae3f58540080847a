"""Torch reference for row compaction: the CPU path and the oracle for any kernel."""

from __future__ import annotations

from torch import Tensor


def compact_rows_ref(h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Rows of ``h`` (B, ...) where ``mask`` (B,) is True, in order, and their indices (R,)."""
    idx = mask.nonzero().squeeze(1)  # (R,)
    return h.index_select(0, idx), idx  # (R, ...), (R,)


def scatter_rows_ref(h: Tensor, idx: Tensor, rows: Tensor) -> Tensor:
    """A copy of ``h`` with ``rows`` (R, ...) written at ``idx`` (R,)."""
    if rows.shape[0] == h.shape[0]:
        # Every row ran: the result is the block output itself (no copy, bit-identical).
        return rows
    return h.index_copy(0, idx, rows.to(h.dtype))
