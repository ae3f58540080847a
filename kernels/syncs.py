"""Count the points where host code waits for tensor data: the syncs of a forward.

On CUDA this is the real thing: ``torch.cuda.set_sync_debug_mode("warn")`` reports every
synchronising call and the warnings are counted. On CPU nothing waits, so the counter records the
same calls that would sync on a GPU (host reads of tensor data: ``bool``/``int``/``float`` of a
tensor, ``item``, ``tolist``, ``nonzero``, ``masked_select``, boolean-mask indexing) through a
``TorchFunctionMode``; tests use it to pin how many times a forward reads the device.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

HOST_READS = frozenset(
    {"__bool__", "__int__", "__float__", "__index__", "item", "tolist", "nonzero", "masked_select"}
)
CUDA_SYNC_MESSAGE = "called a synchronizing CUDA operation"


@dataclass
class SyncCount:
    count: int = 0
    calls: list[str] = field(default_factory=list)  # what synced (CPU: the torch function names)


def _bool_index(args: tuple) -> bool:
    index = args[1] if len(args) > 1 else None
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, Tensor) and i.dtype == torch.bool for i in items)


class _HostReads(TorchFunctionMode):
    def __init__(self, counter: SyncCount) -> None:
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS or (name in ("__getitem__", "__setitem__") and _bool_index(args)):
            self.counter.count += 1
            self.counter.calls.append(name)
        return func(*args, **(kwargs or {}))


@contextmanager
def count_syncs(device: torch.device | str) -> Iterator[SyncCount]:
    """Count syncs inside the block; the count is complete when the block exits."""
    counter = SyncCount()
    if torch.device(device).type == "cuda":
        previous = torch.cuda.get_sync_debug_mode()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield counter
            finally:
                torch.cuda.set_sync_debug_mode(previous)
        messages = [str(w.message) for w in caught if CUDA_SYNC_MESSAGE in str(w.message)]
        counter.count, counter.calls = len(messages), messages
    else:
        with _HostReads(counter):
            yield counter
