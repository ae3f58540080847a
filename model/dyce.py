"""DyCE: a configuration of exits, its execution policy and its compute accounting.

From "DyCE: Dynamically Configurable Exiting for Deep Learning Compression and Real-time Scaling".

A configuration enables at most one exit per position k (after layer k, 1 <= k < L), each with a
type (``model.exits``) and a threshold. A row leaves at the first enabled exit whose max softmax
exceeds the threshold (strictly); a row that passes every enabled exit runs all L layers and the
backbone's head answers. The compute of a row counts the embedding, the layers it ran, every
enabled exit head evaluated on the way (the one it left at included) and, for a row that never
left, the backbone's head (``flops_by_exit``).

``DyCEPolicy`` runs a configuration inside ``AdaptiveViT``'s loop: before layer k it evaluates
the exit after layer k only on the rows still alive (compacted with ``kernels.compact_rows``,
confidences scattered back), marks EXIT where the confidence clears the threshold, and answers
those rows from the logits it just computed (``exit_logits``). Everyone else runs. The
compaction is the exact one in both of the model's modes, so in ``fixed`` mode each enabled exit
adds a host sync (the number of alive rows).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from skipvit.kernels import compact_rows
from skipvit.model.config import ViTConfig
from skipvit.model.exits import ExitSet, exit_flops, exit_type
from skipvit.model.flops import block_flops, forward_flops, head_flops, patch_embed_flops
from skipvit.model.policy import EXIT, RUN, ExecutionPolicy

# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ExitChoice:
    after: int  # the exit reads the state after this many layers
    type: str
    threshold: float  # leave when max softmax > threshold

    def to_dict(self) -> dict[str, Any]:
        return {"after": self.after, "type": self.type, "threshold": self.threshold}


@dataclass(frozen=True)
class DyCEConfig:
    exits: tuple[ExitChoice, ...] = ()  # by position, at most one per position

    def __post_init__(self) -> None:
        positions = [e.after for e in self.exits]
        if positions != sorted(set(positions)):
            raise ValueError(f"exit positions {positions} must be increasing, one exit per position")
        for e in self.exits:
            exit_type(e.type)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> DyCEConfig:
        """From a point's params: ``{"exits": [{"after": k, "type": t, "threshold": x}, ...]}``."""
        try:
            items = [
                ExitChoice(int(e["after"]), str(e["type"]), float(e["threshold"])) for e in params["exits"]
            ]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"a dyce point's params need 'exits': a list of {{after, type, threshold}} ({e}); "
                "Hint: re-run `skipvit search dyce`"
            ) from None
        return cls(tuple(sorted(items, key=lambda e: e.after)))

    def to_params(self) -> dict[str, Any]:
        return {"exits": [e.to_dict() for e in self.exits]}

    def check(self, depth: int, exits: ExitSet | None) -> None:
        """Refuse a configuration the model cannot run, with a hint."""
        for e in self.exits:
            if not 1 <= e.after < depth:
                raise ValueError(f"an exit after layer {e.after} is out of range 1 .. {depth - 1}")
            if exits is None or not exits.has(e.after, e.type):
                raise ValueError(
                    f"the configuration needs a {e.type!r} exit after layer {e.after}, which the weight "
                    "set lacks; Hint: train it with `skipvit train exits --types ... --positions ...`"
                )

    def describe(self) -> str:
        return " ".join(f"{e.after}:{e.type}>{e.threshold:.4g}" for e in self.exits) or "no exits"


# ---------------------------------------------------------------- compute accounting


def flops_by_exit(cfg: ViTConfig, config: DyCEConfig) -> np.ndarray:
    """FLOPs of one row by where it is answered: entry k (0 <= k < L) for a row leaving at the
    exit after layer k, entry L for a row the backbone's head answers. (L + 1,) float64.

    Entry k = embedding + k blocks + every enabled exit at positions <= k; entry L = embedding
    + L blocks + every enabled exit + the head. Entries at positions with no enabled exit are
    what a row leaving there would cost; no row does.
    """
    depth = cfg.depth
    heads = np.zeros(depth + 1)
    for e in config.exits:
        heads[e.after] += exit_flops(cfg, e.type)
    heads = np.cumsum(heads)  # exits evaluated by the time a row reaches position k
    table = patch_embed_flops(cfg) + np.arange(depth + 1) * float(block_flops(cfg)) + heads
    table[depth] += head_flops(cfg)
    return table


def static_flops(cfg: ViTConfig) -> float:
    return float(forward_flops(cfg, cfg.depth).total)


def relative_compute(cfg: ViTConfig, config: DyCEConfig, answered_at: Tensor | np.ndarray) -> float:
    """Mean FLOPs per row / static FLOPs; ``answered_at`` (N,) is the exit position of each row
    (L for the backbone's head), i.e. the number of layers it ran."""
    at = np.asarray(answered_at.cpu() if isinstance(answered_at, Tensor) else answered_at, dtype=np.int64)
    return float(flops_by_exit(cfg, config)[at].mean() / static_flops(cfg))


# ---------------------------------------------------------------- the policy


class DyCEPolicy(ExecutionPolicy):
    """Runs a ``DyCEConfig`` with the model's exit heads; the heads see only the alive rows."""

    def __init__(self, exits: ExitSet, config: DyCEConfig) -> None:
        config.check(exits.cfg.depth, exits)
        self.exits = exits
        self.by_layer = {e.after: e for e in config.exits}
        self.config = config
        self._logits: dict[int, Tensor] = {}

    def begin(self, h: Tensor) -> None:  # h: (B, T, D)
        self._logits = {}

    def decide(self, layer: int, h: Tensor, alive: Tensor) -> Tensor:
        decision = torch.full((h.shape[0],), RUN, dtype=torch.int8, device=h.device)  # (B,)
        choice = self.by_layer.get(layer)
        if choice is None:
            return decision
        rows_h, idx = compact_rows(h, alive)  # (R, T, D), (R,)
        if rows_h.shape[0] == 0:
            return decision
        logits = self.exits.head(choice.after, choice.type)(rows_h)  # (R, C)
        conf = logits.float().softmax(dim=-1).amax(dim=-1)  # (R,)
        leave = idx[conf > choice.threshold]  # (E,)
        decision[leave] = EXIT
        full = logits.new_zeros(h.shape[0], logits.shape[1])  # (B, C)
        self._logits[layer] = full.index_copy(0, idx, logits)
        return decision

    def exit_logits(self, layer: int, h: Tensor, rows: Tensor) -> Tensor | None:
        logits = self._logits.get(layer)
        if logits is None:
            return None  # no exit here, so no row leaves here
        return logits.index_select(0, rows)  # (E, C)


def choices(items: Sequence[tuple[int, str, float]]) -> DyCEConfig:
    """A configuration from (after, type, threshold) triples (any order)."""
    return DyCEConfig(tuple(ExitChoice(int(k), t, float(x)) for k, t, x in sorted(items)))
