"""Row compaction: gather the rows that run a layer, scatter their results back.

Two contracts, each with a torch reference (``kernels.reference``, the CPU path and the oracle)
and a Triton kernel (``kernels.triton_compact``, CUDA; imported only when used):

- exact, ``compact_rows`` / ``scatter_rows``: exactly the R rows that run. R is a shape, so the
  host reads it from the device: one sync per call.
- fixed capacity, ``compact_rows_fixed`` / ``scatter_rows_fixed``: ``capacity`` slots whatever
  the mask says, the count stays on the device, padding slots point at row B and are skipped on
  the way back. No sync; the caller checks ``count <= capacity`` when it reads results anyway.

``kernels.dispatch`` picks the backend (``SKIPVIT_COMPACT=auto|torch|triton``, ``set_backend``).
"""

from skipvit.kernels.dispatch import (
    compact_rows,
    compact_rows_fixed,
    get_backend,
    scatter_rows,
    scatter_rows_fixed,
    set_backend,
)

__all__ = [
    "compact_rows",
    "compact_rows_fixed",
    "get_backend",
    "scatter_rows",
    "scatter_rows_fixed",
    "set_backend",
]
