"""Execution policies: at each layer boundary, decide per row whether it runs, skips or exits.

A policy is a small stateful object used for one forward at a time:
``begin(h)`` is called after the embedding, ``decide(j, h, alive)`` before layer ``j``.
Decisions are a ``(B,)`` int8 tensor of ``RUN``/``SKIP``/``EXIT``. Rows that already exited
(``alive`` is False) are ignored whatever the policy says. A row that exits is answered from
``exit_logits`` if the policy has its own exit head there, else from the model's head.
"""

from __future__ import annotations

import torch
from torch import Tensor

RUN = 0
SKIP = 1
EXIT = 2


class ExecutionPolicy:
    """Base policy: every row runs every layer. Subclasses override ``decide``."""

    def begin(self, h: Tensor) -> None:  # h: (B, T, D) after the embedding
        """Reset per-forward state."""

    def decide(self, layer: int, h: Tensor, alive: Tensor) -> Tensor:
        return torch.full((h.shape[0],), RUN, dtype=torch.int8, device=h.device)

    def exit_logits(self, layer: int, h: Tensor, rows: Tensor) -> Tensor | None:
        """Logits for ``rows`` (index tensor) exiting before ``layer``; None means the model head."""
        return None

    @property
    def always_runs(self) -> bool:
        """True when the policy never skips or exits, so the loop can skip compaction."""
        return False

    @property
    def may_exit(self) -> bool:
        """False when ``decide`` never answers EXIT: the loop then skips the exit bookkeeping and
        asks ``run_mask`` instead of ``decide``."""
        return True

    def run_mask(self, layer: int, h: Tensor, alive: Tensor) -> Tensor:
        """(B,) bool: the rows that run ``layer``; asked only of policies that never exit."""
        return self.decide(layer, h, alive) == RUN


class StaticPolicy(ExecutionPolicy):
    """Every row runs every layer: the plain ViT."""

    @property
    def always_runs(self) -> bool:
        return True


class MaskPolicy(ExecutionPolicy):
    """Fixed per-row decisions, given as a (B, L) int8 tensor. Used by tests and analyses."""

    def __init__(self, decisions: Tensor) -> None:
        self.decisions = decisions.to(torch.int8)  # (B, L)

    def decide(self, layer: int, h: Tensor, alive: Tensor) -> Tensor:
        return self.decisions[:, layer].to(h.device)
