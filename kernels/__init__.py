"""Row compaction: gather the rows that run a layer, scatter their results back.

``compact_rows`` / ``scatter_rows`` dispatch to the backend chosen by ``kernels.dispatch``
(the torch reference everywhere for now; a Triton kernel on CUDA plugs in here).
"""

from kernels.dispatch import compact_rows, scatter_rows

__all__ = ["compact_rows", "scatter_rows"]
