"""Optimiser pieces shared by the training loops: parameter groups and one gradient step."""

from __future__ import annotations

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms and embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.dim() < 2 or "pos_embed" in name or "cls_token" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def gradient_step(opt: torch.optim.Optimizer, loss: torch.Tensor, grad_clip: float) -> None:
    """Backpropagate ``loss``, clip the optimiser's parameters' gradient norm (0: no clip), step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_([p for grp in opt.param_groups for p in grp["params"]], grad_clip)
    opt.step()
