"""Learning-rate schedule: linear warmup then cosine decay, as a pure function of the step."""

from __future__ import annotations

import math

import torch


def warmup_cosine(step: int, total: int, warmup: int, base_lr: float, min_ratio: float = 0.01) -> float:
    if total <= 0:
        return base_lr
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def hold_then_ramp(step: int, hold: int, ramp: int) -> float:
    """0 for the first ``hold`` steps, then rising linearly to 1 over ``ramp`` steps."""
    if step < hold:
        return 0.0
    return min(1.0, (step - hold + 1) / ramp) if ramp > 0 else 1.0


def set_lr(opt: torch.optim.Optimizer, step: int, total: int, warmup: int) -> None:
    """Every parameter group's learning rate at ``step``: ``warmup_cosine`` of its ``base_lr``, times
    ``hold_then_ramp`` for a group with a ``hold`` of (hold steps, ramp steps)."""
    for group in opt.param_groups:
        factor = hold_then_ramp(step, *group["hold"]) if "hold" in group else 1.0
        group["lr"] = factor * warmup_cosine(step, total, warmup, group["base_lr"])
