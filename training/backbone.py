"""One pass of a frozen backbone that records what the DyCE exit heads read: the pooled tokens
after chosen layers, and the backbone's own final logits. `train exits` trains the heads on these;
`search dyce` scores every head on them."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from skipvit.model.exits import pooled_tokens
from skipvit.model.vit import AdaptiveViT
from skipvit.training.data.augment import to_float
from skipvit.training.data.base import ArrayData
from skipvit.training.device import full_precision


@torch.no_grad()
def backbone_features(
    model: AdaptiveViT,
    data: ArrayData,
    mean,
    std,
    positions: Sequence[int],
    batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """``pooled_tokens`` after each layer in ``positions``, (N, P, 2, D) float32, and the final
    logits (N, C) float32, on the CPU.

    The loop is the static forward (every row runs every layer), written out to read the state
    between layers. ``no_grad`` rather than ``inference_mode``: the heads train on the results.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    want = set(positions)
    feats, logits = [], []
    for images, _ in data.batches(batch_size):
        x = to_float(images.to(device), mean, std)  # (B, C, H, W)
        with full_precision(device):  # the exits decide on these in fp32 when served
            h = model.embed(x)  # (B, T, D)
            pooled = []
            for j in range(model.depth):
                h = model.block(j)(h)  # (B, T, D): the state after layer j + 1
                if j + 1 in want:
                    pooled.append(pooled_tokens(h))  # (B, 2, D)
            z = model.forward_head(h)  # (B, C)
        feats.append(torch.stack(pooled, dim=1).float().cpu())  # (B, P, 2, D)
        logits.append(z.float().cpu())
    model.train(was_training)
    return torch.cat(feats), torch.cat(logits)
