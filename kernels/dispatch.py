"""The compaction backend used by the model's layer loop.

Only the torch reference exists so far; it is exact on every device. A Triton kernel for CUDA
plugs in here, behind the same two functions.
"""

from __future__ import annotations

from torch import Tensor

from kernels.reference import compact_rows_ref, scatter_rows_ref


def compact_rows(h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Rows of ``h`` (B, ...) where ``mask`` (B,) is True, and their indices (R,)."""
    return compact_rows_ref(h, mask)


def scatter_rows(h: Tensor, idx: Tensor, rows: Tensor) -> Tensor:
    """``h`` with ``rows`` (R, ...) written back at ``idx`` (R,)."""
    return scatter_rows_ref(h, idx, rows)
