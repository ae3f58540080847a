"""DyCE (Dynamically Configurable Exiting): what the search scores its configurations on.

**Record once.** On the validation split (carved from train), one pass of the backbone records,
for every trained exit (position, type), whether its prediction is right and its confidence (max
softmax), plus whether the backbone's own answer is right (``record``). Every configuration is
then scored by simulation on these arrays (``Simulator``), with the accounting of
``model.dyce.flops_by_exit``: a row leaves at the first enabled exit whose confidence exceeds the
threshold; its compute is the embedding, the layers it ran and every enabled head on the way.

**Options.** At each position: no exit, or one type with one threshold from a grid of
``thresholds`` values per exit, midway between neighbouring recorded confidences at evenly spaced
quantiles (so a threshold never sits on a recorded value).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from skipvit.model.config import ViTConfig
from skipvit.model.dyce import DyCEConfig, ExitChoice
from skipvit.model.exits import exit_flops, exits_of
from skipvit.model.flops import block_flops, head_flops, patch_embed_flops
from skipvit.model.vit import AdaptiveViT
from skipvit.training.backbone import backbone_features
from skipvit.training.data.base import ArrayData

Option = tuple[int, int] | None  # (type index, threshold index) at one position, or no exit
Choice = tuple[Option, ...]  # one option per position of the exit set


# ---------------------------------------------------------------- recording


@dataclass
class Recording:
    """What the search needs of one split: per exit (position, type), right or wrong and confidence."""

    positions: list[int]
    types: list[str]
    correct: np.ndarray  # (P, K, N) bool: exit (positions[p], types[k]) is right
    conf: np.ndarray  # (P, K, N) float32: its max softmax
    final_correct: np.ndarray  # (N,) bool: the backbone's head is right

    @property
    def n(self) -> int:
        return len(self.final_correct)


@torch.no_grad()
def record(model: AdaptiveViT, data: ArrayData, mean, std, batch_size: int = 512, device="cpu") -> Recording:
    exits = exits_of(model)
    if exits is None:
        raise ValueError("this weight set has no exit heads; Hint: run `skipvit train exits` first")
    positions, types = exits.positions, exits.types
    feats, final = backbone_features(model, data, mean, std, positions, batch_size, device)  # (N, P, 2, D)
    labels = data.labels
    n = len(labels)
    correct = np.zeros((len(positions), len(types), n), dtype=bool)
    conf = np.zeros((len(positions), len(types), n), dtype=np.float32)
    exits.eval()
    for p, k in enumerate(positions):
        for t, kind in enumerate(types):
            if not exits.has(k, kind):
                conf[p, t] = np.inf  # a missing head never lets a row leave; the search never picks it
                continue
            head = exits.head(k, kind)
            for s in range(0, n, 4096):
                logits = head.from_pooled(feats[s : s + 4096, p].to(device)).float()  # (b, C)
                prob = logits.softmax(-1)
                c, pred = prob.max(-1)
                conf[p, t, s : s + 4096] = c.cpu().numpy()
                correct[p, t, s : s + 4096] = (pred.cpu() == labels[s : s + 4096]).numpy()
    final_correct = (final.argmax(-1) == labels).numpy()
    return Recording(positions, types, correct, conf, final_correct)


def threshold_grid(conf: np.ndarray, count: int) -> np.ndarray:
    """``count`` thresholds (at most) for one exit's confidences (N,): midway between neighbouring
    distinct values, at evenly spaced quantiles from 0 to 0.995 (float32, increasing)."""
    values = np.unique(conf[np.isfinite(conf)])
    if len(values) < 2:
        return np.array([np.float32(values[0]) if len(values) else np.float32(1.0)], dtype=np.float32)
    mids = ((values[:-1].astype(np.float64) + values[1:]) / 2).astype(np.float32)  # (U - 1,)
    sorted_conf = np.sort(conf)
    picks = sorted_conf[(np.linspace(0.0, 0.995, count) * (len(conf) - 1)).astype(int)]
    at = np.clip(np.searchsorted(values, picks), 0, len(mids) - 1)
    return np.unique(mids[at])


# ---------------------------------------------------------------- simulation


@dataclass(frozen=True)
class Score:
    accuracy: float
    flops: float  # mean per row
    mean_layers: float

    def relative(self, static: float) -> float:
        return self.flops / static


class Simulator:
    """Scores configurations on a ``Recording`` without running the model."""

    def __init__(self, rec: Recording, cfg: ViTConfig, thresholds: int) -> None:
        self.rec, self.cfg = rec, cfg
        self.grid = [
            [threshold_grid(rec.conf[p, t], thresholds) for t in range(len(rec.types))]
            for p in range(len(rec.positions))
        ]
        # leave[p][t]: (G, N) bool, row clears threshold g of exit (p, t)
        self.leave = [
            [rec.conf[p, t][None, :] > g[:, None] for t, g in enumerate(row)]
            for p, row in enumerate(self.grid)
        ]
        self.head_cost = [exit_flops(cfg, t) for t in rec.types]
        self.embed, self.block, self.head = patch_embed_flops(cfg), float(block_flops(cfg)), head_flops(cfg)
        self.static = float(self.embed + cfg.depth * self.block + self.head)
        self.backbone_accuracy = float(rec.final_correct.mean())
        missing = [
            np.isinf(rec.conf[p, t, 0]) if rec.n else False
            for p in range(len(rec.positions))
            for t in range(len(rec.types))
        ]
        self.available = ~np.array(missing).reshape(len(rec.positions), len(rec.types))

    def options(self, p: int) -> list[Option]:
        opts: list[Option] = [None]
        for t in range(len(self.rec.types)):
            if self.available[p, t]:
                opts += [(t, g) for g in range(len(self.grid[p][t]))]
        return opts

    def score(self, choice: Choice) -> Score:
        rec, n = self.rec, self.rec.n
        remaining = np.ones(n, dtype=bool)
        right = flops = layers = 0.0
        heads = 0.0  # FLOPs of the enabled heads passed so far
        for p, opt in enumerate(choice):
            if opt is None:
                continue
            t, g = opt
            k = rec.positions[p]
            heads += self.head_cost[t]
            go = remaining & self.leave[p][t][g]  # (N,)
            count = int(go.sum())
            right += int((go & rec.correct[p, t]).sum())
            flops += count * (self.embed + k * self.block + heads)
            layers += count * k
            remaining &= ~go
        rest = int(remaining.sum())
        right += int((remaining & rec.final_correct).sum())
        flops += rest * (self.embed + self.cfg.depth * self.block + heads + self.head)
        layers += rest * self.cfg.depth
        return Score(right / n, flops / n, layers / n)

    def cost(self, s: Score, lam: float) -> float:
        rel_acc = s.accuracy / self.backbone_accuracy if self.backbone_accuracy else s.accuracy
        return lam * (1 - rel_acc) + (1 - lam) * s.flops / self.static

    def config(self, choice: Choice) -> DyCEConfig:
        exits = []
        for p, opt in enumerate(choice):
            if opt is not None:
                t, g = opt
                exits.append(ExitChoice(self.rec.positions[p], self.rec.types[t], float(self.grid[p][t][g])))
        return DyCEConfig(tuple(exits))
