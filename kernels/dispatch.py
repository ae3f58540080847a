"""The compaction backend used by the model's layer loop.

The backend is a setting, ``SKIPVIT_COMPACT`` (read once, when this module is imported), or
``set_backend(name)`` at run time:

- ``auto`` (default): the Triton kernels for CUDA tensors when ``triton`` imports, else the
  torch reference (``kernels.reference``).
- ``torch``: the torch reference everywhere.
- ``triton``: the Triton kernels everywhere. CPU tensors only work under Triton's interpreter
  (``TRITON_INTERPRET=1`` set before the first call); otherwise the call raises with a hint.

Whatever the setting, tensors that need gradients take the torch reference: the kernels are
forward-only (training runs the same loop under autograd).
"""

from __future__ import annotations

import functools
import os
from types import ModuleType

import torch
from torch import Tensor

from skipvit.kernels.reference import (
    compact_rows_fixed_ref,
    compact_rows_ref,
    scatter_rows_fixed_ref,
    scatter_rows_ref,
)

ENV_VAR = "SKIPVIT_COMPACT"
BACKENDS = ("auto", "torch", "triton")


def _parse(value: str, source: str) -> str:
    name = value.strip().lower()
    if name not in BACKENDS:
        raise ValueError(
            f"{source}={value!r} is not a compaction backend. Hint: use one of {', '.join(BACKENDS)} "
            "(auto: Triton on CUDA when installed, else torch)"
        )
    return name


_backend = _parse(os.environ.get(ENV_VAR, "auto"), ENV_VAR)


def get_backend() -> str:
    """The configured backend: ``auto``, ``torch`` or ``triton``."""
    return _backend


def set_backend(name: str | None) -> str:
    """Override the backend (``None``: back to ``SKIPVIT_COMPACT``). Returns the previous setting."""
    global _backend
    previous = _backend
    _backend = _parse(
        os.environ.get(ENV_VAR, "auto") if name is None else name, "backend" if name else ENV_VAR
    )
    return previous


@functools.cache
def triton_module() -> ModuleType | None:
    """``kernels.triton_compact``, or None where Triton is not installed."""
    try:
        import skipvit.kernels.triton_compact as mod
    except ImportError:
        return None
    return mod


def resolve(h: Tensor, *tensors: Tensor) -> str:
    """The backend that a call on ``h`` (and ``tensors``) takes now: ``torch`` or ``triton``."""
    if _backend == "torch":
        return "torch"
    if torch.is_grad_enabled() and any(t.requires_grad for t in (h, *tensors)):
        return "torch"  # the kernels have no backward
    if _backend == "auto":
        return "triton" if h.is_cuda and triton_module() is not None else "torch"
    mod = triton_module()
    if mod is None:
        raise RuntimeError(
            f"{ENV_VAR}=triton but triton is not installed. Hint: `pip install triton` "
            f"(Linux x86_64), or set {ENV_VAR}=auto"
        )
    if not h.is_cuda and not mod.INTERPRET:
        raise RuntimeError(
            f"{ENV_VAR}=triton on a {h.device.type} tensor: Triton compiles for CUDA only. Hint: "
            f"move the model to a GPU, set {ENV_VAR}=auto, or set TRITON_INTERPRET=1 before "
            "kernels.triton_compact is first imported to run the kernels in Triton's interpreter"
        )
    return "triton"


def compact_rows(h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Rows of ``h`` (B, ...) where ``mask`` (B,) is True, and their indices (R,). Syncs once (R)."""
    if resolve(h) == "triton":
        return triton_module().compact_rows(h, mask)
    return compact_rows_ref(h, mask)


def scatter_rows(h: Tensor, idx: Tensor, rows: Tensor) -> Tensor:
    """``h`` with ``rows`` (R, ...) written back at ``idx`` (R,)."""
    if resolve(h, rows) == "triton":
        return triton_module().scatter_rows(h, idx, rows)
    return scatter_rows_ref(h, idx, rows)


def compact_rows_fixed(h: Tensor, mask: Tensor, capacity: int) -> tuple[Tensor, Tensor, Tensor]:
    """``capacity`` slots of rows (capacity, ...), their indices (capacity,) and the count (), no sync.

    Slots at or past the count hold zeros and index B; ``count > capacity`` means rows were left out.
    """
    if resolve(h) == "triton":
        return triton_module().compact_rows_fixed(h, mask, capacity)
    return compact_rows_fixed_ref(h, mask, capacity)


def scatter_rows_fixed(h: Tensor, idx: Tensor, rows: Tensor) -> Tensor:
    """A copy of ``h`` with ``rows`` (S, ...) written at ``idx`` (S,); padding slots (index B) are skipped."""
    if resolve(h, rows) == "triton":
        return triton_module().scatter_rows_fixed(h, idx, rows)
    return scatter_rows_fixed_ref(h, idx, rows)
