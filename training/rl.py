"""REINFORCE with a learned baseline for the skip agents (thesis eqs. 3.6-3.13). Pure tensor math.

R = w_acc * A - w_layers * L + eps, per image: A = 1 if the prediction is correct, L = the
fraction of layers run, eps = -1e-5 (the thesis: a zero reward destabilises training). The
reward arrives after the last layer and is discounted back over the layers, G_j = gamma * G_{j+1}
(eq. 3.10), so G_j = gamma^(L-1-j) * R. Returns are whitened over the whole (B, L) matrix: per
layer whitening would cancel gamma, which only scales a layer's returns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class RewardConfig:
    gamma: float = 0.99
    eps: float = -1e-5
    w_acc: float = 1.0
    w_layers: float = 1.0


def rewards(correct: Tensor, executed: Tensor, cfg: RewardConfig) -> Tensor:
    """(B,) bool, (B, L) bool -> (B,) float."""
    return cfg.w_acc * correct.float() - cfg.w_layers * executed.float().mean(1) + cfg.eps


def discounted_returns(reward: Tensor, depth: int, gamma: float) -> Tensor:
    """(B,) -> (B, L): G_j = gamma^(L-1-j) * R."""
    powers = torch.arange(depth - 1, -1, -1, device=reward.device, dtype=reward.dtype)  # (L,)
    return reward[:, None] * gamma ** powers[None, :]  # (B, L)


def whiten(returns: Tensor) -> Tensor:
    """Zero mean, unit variance over every entry of the (B, L) batch of returns."""
    if returns.numel() < 2:
        return returns - returns.mean()
    return (returns - returns.mean()) / (returns.std() + 1e-8)


def reinforce_losses(log_probs: Tensor, returns: Tensor, baselines: Tensor) -> tuple[Tensor, Tensor]:
    """Policy loss -(G - b) log pi (b detached) and baseline MSE to G; all (B, L) in, scalars out."""
    advantage = (returns - baselines.detach()).detach()  # (B, L)
    policy_loss = -(advantage * log_probs).mean()
    baseline_loss = F.mse_loss(baselines, returns.detach())
    return policy_loss, baseline_loss
