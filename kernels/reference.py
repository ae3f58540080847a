"""Torch reference for row compaction: the CPU path and the oracle for any kernel.

Two contracts:

- exact: ``compact_rows_ref`` returns exactly the R rows that run; R is a shape, so it is read
  on the host (``nonzero`` synchronises with the device).
- fixed capacity: ``compact_rows_fixed_ref`` returns ``capacity`` slots whatever the mask says
  and keeps the count on the device, so it never waits for the device. Slot ``k`` holds the
  row with the ``(k+1)``-th set bit; slots at or past the count hold zeros and index ``B`` (one
  past the last row), which ``scatter_rows_fixed_ref`` skips. A count above the capacity means
  rows were left out: the caller checks that once, when it reads its results anyway.
"""

from __future__ import annotations

import torch
from torch import Tensor


def compact_rows_ref(h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Rows of ``h`` (B, ...) where ``mask`` (B,) is True, in order, and their indices (R,).

    When every row is set the rows are ``h`` itself, not a copy: callers read them, never write."""
    idx = mask.nonzero().squeeze(1)  # (R,)
    if idx.shape[0] == h.shape[0]:
        return h, idx  # every row runs: no copy (the block never writes into its input)
    return h.index_select(0, idx), idx  # (R, ...), (R,)


def scatter_rows_ref(h: Tensor, idx: Tensor, rows: Tensor) -> Tensor:
    """A copy of ``h`` with ``rows`` (R, ...) written at ``idx`` (R,)."""
    if rows.shape[0] == h.shape[0]:
        # Every row ran: the result is the block output itself (no copy, bit-identical).
        return rows
    return h.index_copy(0, idx, rows.to(h.dtype))


def compact_rows_fixed_ref(h: Tensor, mask: Tensor, capacity: int) -> tuple[Tensor, Tensor, Tensor]:
    """The first ``capacity`` rows of ``h`` (B, ...) where ``mask`` (B,) is True, without a sync.

    Returns rows (capacity, ...), idx (capacity,) int64 and count () int64, all on h's device.
    """
    b = h.shape[0]
    cum = mask.to(torch.int64).cumsum(0)  # (B,) inclusive prefix count
    count = cum[-1] if b else torch.zeros((), dtype=torch.int64, device=h.device)  # ()
    slots = torch.arange(1, capacity + 1, device=h.device)  # (S,)
    idx = torch.searchsorted(cum, slots)  # (S,): first position whose prefix count reaches k+1, else B
    padded = torch.cat([h, h.new_zeros((1, *h.shape[1:]))])  # (B+1, ...): row B is the zero padding row
    return padded.index_select(0, idx), idx, count  # (S, ...), (S,), ()


def scatter_rows_fixed_ref(h: Tensor, idx: Tensor, rows: Tensor) -> Tensor:
    """A copy of ``h`` (B, ...) with ``rows`` (S, ...) written at ``idx`` (S,); indices >= B are skipped."""
    b = h.shape[0]
    padded = torch.cat([h, h.new_zeros((1, *h.shape[1:]))])  # (B+1, ...): row B absorbs the padding slots
    return padded.index_copy_(0, idx.clamp(max=b), rows.to(h.dtype))[:b]  # (B, ...)
