"""Exit heads for DyCE: small classifiers attachable after any layer of a trained backbone.

From "DyCE: Dynamically Configurable Exiting for Deep Learning Compression and Real-time Scaling".

An exit *after layer k* (k = 1 .. L-1) reads the hidden state after k layers, (B, T, D), pools it
to a feature vector and classifies it. After layer L the backbone's own head answers, so no exit
sits there. Exit types (``EXIT_TYPES``), from cheapest to largest:

- ``linear``: LayerNorm + Linear(D -> C) on the CLS token.
- ``mlp-s``: the mean of the T tokens, LayerNorm, Linear(D -> D), GELU, Linear(D -> C).
- ``mlp-m``: [CLS ; mean of the tokens] (2D), LayerNorm, Linear(2D -> 2D), GELU, Linear(2D -> C).

Every head reads only the CLS token and the token mean, so training can pool once
(``pooled_tokens``, (B, 2, D)) and feed the heads from that (``ExitHead.from_pooled``).

``ExitSet`` holds one head per (position, type); a model carries it as ``model.exits`` (its
tensors are saved under ``exits.`` in a weight set). FLOPs follow ``model.flops``: 2 x the
multiply-adds of the matrix products, plus T x D additions for a token mean; layer norms, GELU,
biases and the softmax are not counted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from skipvit.model.config import ViTConfig

PREFIX = "exits."

# ---------------------------------------------------------------- types


@dataclass(frozen=True)
class ExitType:
    name: str
    pool: str  # "cls", "mean" or "cls+mean"
    hidden: float  # hidden width as a multiple of the input width; 0 = a single linear layer

    def in_dim(self, dim: int) -> int:
        return 2 * dim if self.pool == "cls+mean" else dim

    def hidden_dim(self, dim: int) -> int:
        return int(self.in_dim(dim) * self.hidden)


EXIT_TYPES: dict[str, ExitType] = {
    t.name: t
    for t in (
        ExitType("linear", "cls", 0.0),
        ExitType("mlp-s", "mean", 1.0),
        ExitType("mlp-m", "cls+mean", 1.0),
    )
}


def exit_type(name: str) -> ExitType:
    if name not in EXIT_TYPES:
        raise ValueError(f"unknown exit type {name!r}; Hint: choose from {', '.join(EXIT_TYPES)}")
    return EXIT_TYPES[name]


def exit_flops(cfg: ViTConfig, name: str) -> int:
    """FLOPs of one exit head of type ``name`` on one image (pooling + its linear layers)."""
    kind = exit_type(name)
    d_in, hidden, classes = kind.in_dim(cfg.dim), kind.hidden_dim(cfg.dim), cfg.num_classes
    pool = cfg.num_tokens * cfg.dim if kind.pool != "cls" else 0  # the token mean's additions
    macs = d_in * hidden + hidden * classes if hidden else d_in * classes
    return pool + 2 * macs


# ---------------------------------------------------------------- components


def pooled_tokens(h: Tensor) -> Tensor:  # h: (B, T, D)
    """The CLS token and the token mean, stacked: what every exit type reads."""
    return torch.stack([h[:, 0], h.mean(dim=1)], dim=1)  # (B, 2, D)


class ExitHead(nn.Module):
    def __init__(self, cfg: ViTConfig, kind: ExitType) -> None:
        super().__init__()
        self.kind = kind
        d_in, hidden = kind.in_dim(cfg.dim), kind.hidden_dim(cfg.dim)
        self.norm = nn.LayerNorm(d_in)
        if hidden:
            self.fc1 = nn.Linear(d_in, hidden)
            self.fc2 = nn.Linear(hidden, cfg.num_classes)
        else:
            self.fc = nn.Linear(d_in, cfg.num_classes)

    def from_pooled(self, p: Tensor) -> Tensor:  # p: (B, 2, D) from pooled_tokens -> (B, C)
        if self.kind.pool == "cls":
            f = p[:, 0]  # (B, D)
        elif self.kind.pool == "mean":
            f = p[:, 1]  # (B, D)
        else:
            f = p.flatten(1)  # (B, 2D)
        return self.classify(f)

    def classify(self, f: Tensor) -> Tensor:  # f: (B, D_in) -> (B, C)
        f = self.norm(f)
        if self.kind.hidden:
            return self.fc2(F.gelu(self.fc1(f)))
        return self.fc(f)

    def forward(self, h: Tensor) -> Tensor:  # h: (B, T, D) -> (B, C)
        if self.kind.pool == "cls":
            return self.classify(h[:, 0])  # (B, D) in
        if self.kind.pool == "mean":
            return self.classify(h.mean(dim=1))  # (B, D) in
        return self.classify(pooled_tokens(h).flatten(1))  # (B, 2D) in


# ---------------------------------------------------------------- the set


def head_key(after: int, kind: str) -> str:
    return f"{after}_{kind}"


class ExitSet(nn.Module):
    """One exit head per (position, type): ``head(k, type)`` reads the state after layer k."""

    def __init__(self, cfg: ViTConfig, positions: Iterable[int], types: Iterable[str]) -> None:
        super().__init__()
        self.cfg = cfg
        positions, types = sorted(set(positions)), list(dict.fromkeys(types))
        bad = [k for k in positions if not 1 <= k < cfg.depth]
        if bad:
            raise ValueError(
                f"exit positions {bad} are out of range; Hint: an exit sits after layer 1 .. "
                f"{cfg.depth - 1} (after layer {cfg.depth} the backbone's head answers)"
            )
        if not positions or not types:
            raise ValueError("an exit set needs at least one position and one type")
        self.heads = nn.ModuleDict(
            {head_key(k, t): ExitHead(cfg, exit_type(t)) for k in positions for t in types}
        )

    @property
    def keys(self) -> list[tuple[int, str]]:
        """(position, type) of every head, by position then type order."""
        return [(int(k), t) for k, t in (name.split("_", 1) for name in self.heads)]

    @property
    def positions(self) -> list[int]:
        return sorted({k for k, _ in self.keys})

    @property
    def types(self) -> list[str]:
        return list(dict.fromkeys(t for _, t in self.keys))

    def has(self, after: int, kind: str) -> bool:
        return head_key(after, kind) in self.heads

    def head(self, after: int, kind: str) -> ExitHead:
        if not self.has(after, kind):
            raise KeyError(
                f"no exit of type {kind!r} after layer {after}; this set has "
                f"{', '.join(f'{k}:{t}' for k, t in self.keys)}"
            )
        return self.heads[head_key(after, kind)]

    @classmethod
    def from_state(cls, cfg: ViTConfig, state: dict[str, Tensor], prefix: str = PREFIX) -> ExitSet | None:
        """The exit set whose tensors ``state`` holds under ``prefix`` (None when it holds none)."""
        names = {k[len(prefix) :].split(".")[1] for k in state if k.startswith(prefix + "heads.")}
        if not names:
            return None
        pairs = [name.split("_", 1) for name in names]
        try:
            keys = [(int(k), t) for k, t in pairs]
        except ValueError:
            raise ValueError(f"exit head names {sorted(names)} are not <position>_<type>") from None
        types = sorted(
            {t for _, t in keys}, key=lambda t: list(EXIT_TYPES).index(t) if t in EXIT_TYPES else -1
        )
        out = cls(cfg, [k for k, _ in keys], types)
        # The full grid was built; keep only the heads the state holds.
        for name in list(out.heads):
            if name not in names:
                del out.heads[name]
        return out


def attach_exits(model: nn.Module, exits: ExitSet) -> None:
    """Give ``model`` its exit heads (saved with it under ``exits.``)."""
    model.exits = exits


def exits_of(model: nn.Module) -> ExitSet | None:
    return getattr(model, "exits", None)
