"""Choose the compaction backend. Only the torch reference exists so far; it is exact on
every device. ``SKIPVIT_COMPACTION`` (``auto``/``torch``) selects explicitly."""

from __future__ import annotations

import os

from torch import Tensor

from kernels.reference import compact_rows_ref, scatter_rows_ref

BACKENDS = ("auto", "torch")


def backend() -> str:
    choice = os.environ.get("SKIPVIT_COMPACTION", "auto")
    if choice not in BACKENDS:
        raise ValueError(f"SKIPVIT_COMPACTION={choice!r}; expected one of {BACKENDS}")
    return "torch"


def compact_rows(h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    return compact_rows_ref(h, mask)


def scatter_rows(h: Tensor, idx: Tensor, rows: Tensor) -> Tensor:
    return scatter_rows_ref(h, idx, rows)
