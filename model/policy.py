"""Execution policies: at each layer boundary, decide per row whether it runs, skips or exits.

A policy is a small stateful object used for one forward at a time:
``begin(h)`` is called after the embedding, ``decide(j, h, alive)`` before layer ``j``.
Decisions are a ``(B,)`` int8 tensor of ``RUN``/``SKIP``/``EXIT``. Rows that already exited
(``alive`` is False) are ignored whatever the policy says. A row that exits is answered from
``exit_logits`` if the policy has its own exit head there, else from the model's head.
"""

from __future__ import annotations

from collections.abc import Sequence

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


class SkipLayersPolicy(ExecutionPolicy):
    """Every row skips the same fixed set of layers and runs the rest (e.g. the drop-one-layer table)."""

    def __init__(self, skipped: Sequence[int]) -> None:
        self.skipped = frozenset(int(j) for j in skipped)

    @property
    def may_exit(self) -> bool:
        return False

    def decide(self, layer: int, h: Tensor, alive: Tensor) -> Tensor:
        value = SKIP if layer in self.skipped else RUN
        return torch.full((h.shape[0],), value, dtype=torch.int8, device=h.device)


class LayerDropPolicy(ExecutionPolicy):
    """LayerDrop / stochastic depth at the granularity the server skips at: while training, each row
    skips layer j, whole block and residual alike, with probability ``rates[j]``.

    A skipped layer is the identity, exactly as when a policy skips it at inference, and the layers
    that run are not rescaled by 1 / (1 - rate) (drop-path does that per branch; here the kept
    network must be the one served). Departure from stochastic depth as published ("Deep Networks
    with Stochastic Depth", drop-path in later ViTs): whole blocks, per row, no rescaling, which is
    LayerDrop's choice ("Reducing Transformer Depth on Demand with Structured Dropout")."""

    def __init__(self, rates: Sequence[float], generator: torch.Generator | None = None) -> None:
        if any(not 0.0 <= r < 1.0 for r in rates):
            raise ValueError(f"layer-drop rates must lie in [0, 1), got {list(rates)}")
        self.rates = [float(r) for r in rates]
        self.generator = generator

    @property
    def may_exit(self) -> bool:
        return False

    def decide(self, layer: int, h: Tensor, alive: Tensor) -> Tensor:
        return torch.where(self.run_mask(layer, h, alive), RUN, SKIP).to(torch.int8)

    def run_mask(self, layer: int, h: Tensor, alive: Tensor) -> Tensor:
        rate = self.rates[layer]
        if rate == 0.0:
            return torch.ones(h.shape[0], dtype=torch.bool, device=h.device)
        if self.generator is None:
            return torch.rand(h.shape[0], device=h.device) >= rate
        return torch.rand(h.shape[0], generator=self.generator).to(h.device) >= rate  # a CPU generator


def layer_drop_rates(depth: int, max_rate: float) -> list[float]:
    """Rates rising linearly with depth, from 0 before the first layer to ``max_rate`` before the
    last (stochastic depth's linear decay rule): early layers, which every image needs, are rarely
    dropped; later ones, the ones a policy will want to skip, learn to be skippable."""
    if depth == 1:
        return [0.0]
    return [max_rate * j / (depth - 1) for j in range(depth)]
