"""Kernel tests run the Triton kernels compiled on CUDA, else in Triton's interpreter on CPU.

The interpreter is chosen when ``kernels.triton_compact`` is imported (its ``@triton.jit``
decides), so ``TRITON_INTERPRET`` is set here, at collection, before any test imports it.
Never on a CUDA machine: there the rest of the suite must get the compiled kernels.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
